#!/usr/bin/env python3
"""Get or make the token shards that train_gpt.py reads.

  download  fetch the challenge's cached FineWeb shards and tokenizer from the Hugging Face hub
  build     tokenize local text (files, JSONL, or the Python standard library's docstrings)

Shard format: a header of 256 little-endian int32 [20240520, 1, token_count, 0, ...], then
token_count little-endian uint16 tokens. Every document is BOS (id 1) followed by its tokens, no EOS.
"""
import argparse
import ast
import itertools
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
HEADER_BYTES = 4 * HEADER_INTS
BOS_ID = 1
REPO_ID = "willdepueoai/parameter-golf"
# the records' sp8192 shards live in another dataset repo (MATCHED_FINEWEB_REPO_ID in their READMEs)
DEFAULT_REPO = {"sp1024": REPO_ID, "sp8192": "kevclark/parameter-golf"}
VARIANTS = {"sp1024": 1024, "sp8192": 8192}
HUB_TIMEOUT_S = 10
STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "encodings", "ensurepip",
                    "pydoc_data", "site-packages", "dist-packages", "__pycache__"}


class DataError(Exception):
    """A failure the CLI reports as one line on stderr."""


def say(message):
    print(message, flush=True)


# ---------------------------------------------------------------- shards

def write_shard(path, tokens):
    """Write tokens (values 0..65535) as one shard, atomically (temp file, then rename)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise ValueError(f"{path}: token ids must fit in uint16")
    header = np.zeros(HEADER_INTS, "<i4")
    header[:3] = MAGIC, VERSION, tokens.size
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())
    os.replace(tmp, path)


def shard_token_count(path):
    """Token count of a shard, read from its header; ValueError naming the file if header or size is wrong.
    (train_gpt.shard_length checks the same; this copy keeps the tool free of torch, 4 s faster per call.
    tests/test_data.py checks that train_gpt loads what this tool writes.)"""
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, count = np.fromfile(path, "<i4", count=3)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"{path}: magic/version {magic}/{version}, expected {MAGIC}/{VERSION}")
    if size != HEADER_BYTES + 2 * int(count):
        raise ValueError(f"{path}: header says {count} tokens ({HEADER_BYTES + 2 * int(count)} bytes), file has {size}")
    return int(count)


def read_shard(path):
    """All tokens of a header-checked shard as a uint16 array."""
    return np.fromfile(path, "<u2", count=shard_token_count(path), offset=HEADER_BYTES)


def _write_split(token_lists, out_dir, split, shard_tokens):
    """Write BOS-prefixed documents to fineweb_{split}_NNNNNN.bin shards of exactly shard_tokens tokens
    (the last one shorter); a document may continue from one shard into the next. Returns the paths."""
    paths, pending, pending_n = [], [], 0

    def flush(n):
        nonlocal pending, pending_n
        joined = np.concatenate(pending)
        paths.append(Path(out_dir) / f"fineweb_{split}_{len(paths):06d}.bin")
        write_shard(paths[-1], joined[:n])
        pending, pending_n = [joined[n:]], pending_n - n

    for tokens in token_lists:
        doc = np.empty(len(tokens) + 1, np.uint16)
        doc[0], doc[1:] = BOS_ID, tokens
        pending.append(doc)
        pending_n += doc.size
        while pending_n >= shard_tokens:
            flush(shard_tokens)
    if pending_n:
        flush(pending_n)
    return paths


def head(src, out_dir, val_tokens, train_tokens, log=say):
    """The first val_tokens / train_tokens tokens of src's val / train shards (in shard order), each written as one
    shard into the new directory out_dir: a small fixed data set for quick A/Bs. Returns the two paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} exists and is not empty; nothing was written")
    chosen = {}
    for split, n in (("val", val_tokens), ("train", train_tokens)):
        files = sorted(Path(src).glob(f"fineweb_{split}_*.bin"))
        if not files:
            raise DataError(f"no fineweb_{split}_*.bin shards in {src}")
        parts, have = [], 0
        for f in files:
            if have >= n:
                break
            parts.append(read_shard(f)[:n - have])
            have += parts[-1].size
        if have < n:
            raise DataError(f"{src} holds only {have} {split} tokens, fewer than the {n} asked for; nothing was written")
        chosen[split] = np.concatenate(parts)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, tokens in chosen.items():
        paths.append(out_dir / f"fineweb_{split}_000000.bin")
        write_shard(paths[-1], tokens)
        log(f"{paths[-1]}: the first {tokens.size} {split} tokens of {src}")
    return paths


# ---------------------------------------------------------------- tokenizer

def load_tokenizer(path):
    """A SentencePiece processor usable for shards: bos_id 1, every id fits in uint16."""
    import sentencepiece as spm
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot load tokenizer {path}: {e}") from e
    if sp.bos_id() != BOS_ID:
        raise DataError(f"tokenizer {path} has bos_id {sp.bos_id()}; shards need bos_id {BOS_ID}")
    if sp.vocab_size() > 0x10000:
        raise DataError(f"tokenizer {path} has {sp.vocab_size()} pieces; uint16 shards hold at most 65536")
    return sp


def train_tokenizer(docs, out_path, vocab_size=1024):
    """Train a SentencePiece BPE model with the challenge's settings on docs (fed line by line), write it to out_path."""
    import sentencepiece as spm
    lines = (line for doc in docs for line in doc.splitlines() if line.strip())
    try:
        with open(out_path, "wb") as f:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines, model_writer=f, model_type="bpe", vocab_size=vocab_size,
                byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
                pad_id=0, bos_id=1, eos_id=2, unk_id=3, character_coverage=0.999,
                input_sentence_size=2_000_000, shuffle_input_sentence=True, max_sentence_length=1 << 16,
                num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        Path(out_path).unlink(missing_ok=True)
        raise DataError(f"tokenizer training failed: {e}") from e
    return Path(out_path)


# ---------------------------------------------------------------- document sources

class Docs:
    """Re-iterable documents: each iteration calls fn() anew (tokenizer training and shard writing each read them)."""

    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return iter(self.fn())


def text_docs(paths):
    """One document per file; a directory contributes its *.txt files in sorted order."""
    for path in map(Path, paths):
        for file in sorted(path.glob("*.txt")) if path.is_dir() else [path]:
            try:
                yield file.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def jsonl_docs(paths):
    """One document per non-blank line: the line's JSON "text" field."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{path}:{lineno}: expected a JSON object with a \"text\" field") from e
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: \"text\" is not a string")
                yield text


def stdlib_corpus(max_docs=None):
    """English-ish text every Python carries: per standard-library module (sorted by path; private modules, tests,
    IDLE, codecs and bundled packages skipped) one document of its docstrings in source order; ~1.4 M characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith(("_", "test", "config-")))
        for name in sorted(f for f in filenames if f.endswith(".py") and (f == "__init__.py" or not f.startswith(("_", "test")))):
            try:
                tree = ast.parse(Path(dirpath, name).read_bytes())
            except (SyntaxError, ValueError):
                continue
            nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
            nodes.sort(key=lambda n: getattr(n, "lineno", 0))
            doc = "\n\n".join(filter(None, map(ast.get_docstring, nodes)))
            if doc.strip():
                docs.append(doc)
                if len(docs) == max_docs:
                    return docs
    return docs


# ---------------------------------------------------------------- build

def build(docs, out_dir, tokenizer=None, vocab_size=1024, val_docs=50, shard_tokens=10**8, force=False, log=say):
    """Tokenize docs (a re-iterable of strings) into shards in out_dir: the first val_docs documents go to
    fineweb_val_*.bin, the rest to fineweb_train_*.bin. tokenizer: a .model path; None trains one on the train
    documents only and writes out_dir/tokenizer.model. Refuses to replace existing output unless force.
    Returns a summary dict (data_path, tokenizer_path, vocab_size, docs/tokens per split, files, bytes_per_token)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("fineweb_*.bin")) + [p for p in [out / "tokenizer.model"] if tokenizer is None and p.exists()]
    if old and not force:
        raise DataError(f"{out} already holds {old[0].name}" + (f" and {len(old) - 1} more" if len(old) > 1 else "")
                        + "; pass --force to replace")
    sp = load_tokenizer(tokenizer) if tokenizer is not None else None  # check it before deleting anything
    for path in old:
        path.unlink()
    if sp is None:
        tokenizer = train_tokenizer(itertools.islice(docs, val_docs, None), out / "tokenizer.model", vocab_size)
        sp = load_tokenizer(tokenizer)

    counts = {"val": [0, 0], "train": [0, 0]}  # docs, text bytes

    def encoded(split, split_docs):
        for batch in iter(lambda: list(itertools.islice(split_docs, 256)), []):
            counts[split][0] += len(batch)
            counts[split][1] += sum(len(d.encode("utf-8")) for d in batch)
            yield from sp.encode(batch)

    stream = iter(docs)
    try:
        files = {"val": _write_split(encoded("val", itertools.islice(stream, val_docs)), out, "val", shard_tokens)}
        files["train"] = _write_split(encoded("train", stream), out, "train", shard_tokens)
        if counts["val"][0] < val_docs or not counts["train"][0]:
            raise DataError(f"need more than {val_docs} documents (the validation ones), got "
                            f"{counts['val'][0] + counts['train'][0]}")
    except BaseException:  # leave no partial output behind
        for path in out.glob("fineweb_*.bin*"):
            path.unlink()
        raise
    tokens = {split: sum(shard_token_count(p) for p in paths) for split, paths in files.items()}
    n_docs = counts["val"][0] + counts["train"][0]
    summary = {
        "data_path": str(out.resolve()), "tokenizer_path": str(Path(tokenizer).resolve()), "vocab_size": sp.vocab_size(),
        "val_docs": counts["val"][0], "train_docs": counts["train"][0],
        "val_tokens": tokens["val"], "train_tokens": tokens["train"],
        "files": [str(p) for p in files["val"] + files["train"]],
        "bytes_per_token": (counts["val"][1] + counts["train"][1]) / max(1, tokens["val"] + tokens["train"] - n_docs),
    }
    for split in ("val", "train"):
        log(f"{split}: {summary[split + '_docs']:,} docs, {tokens[split]:,} tokens (BOS included) "
            f"in {len(files[split])} shard(s): {', '.join(p.name for p in files[split])}")
    log(f"{summary['bytes_per_token']:.3f} text bytes per token (BOS excluded)")
    log(f"DATA_PATH={summary['data_path']}\nTOKENIZER_PATH={summary['tokenizer_path']}\nVOCAB_SIZE={summary['vocab_size']}")
    return summary


# ---------------------------------------------------------------- download

def _hub_failure(e, what, endpoint):
    from huggingface_hub import constants
    from huggingface_hub.utils import HfHubHTTPError
    detail = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    if isinstance(e, HfHubHTTPError):
        return DataError(f"{what}: the hub answered with an error ({detail})")
    return DataError(f"{what}: could not reach the Hugging Face hub at {endpoint or constants.ENDPOINT} ({detail})")


def _hub_list(repo_id, endpoint):
    """{path in repo: size in bytes} of every file of the dataset repo: one request, short timeout, no retries."""
    from huggingface_hub import HfApi
    try:
        info = HfApi(endpoint=endpoint).dataset_info(repo_id, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # transport errors are requests' or httpx's, depending on the huggingface_hub version
        raise _hub_failure(e, f"listing {repo_id}", endpoint) from e
    return {s.rfilename: s.size for s in info.siblings or []}


def _hub_fetch(repo_id, endpoint, remote, dest, staging):
    """Download one repo file into staging, then move it to dest (so dest only ever holds a whole file)."""
    from huggingface_hub import hf_hub_download
    try:
        got = hf_hub_download(repo_id, remote, repo_type="dataset", endpoint=endpoint, local_dir=staging,
                              etag_timeout=HUB_TIMEOUT_S)
    except Exception as e:  # see _hub_list
        raise _hub_failure(e, f"downloading {remote}", endpoint) from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, dest)


def _local_problem(path, size):
    """Why the local copy of a hub file is unusable (missing, size differs from the hub's, bad shard header), or None."""
    if not path.exists():
        return f"{path}: missing"
    if size is not None and path.stat().st_size != size:
        return f"{path}: {path.stat().st_size} bytes, the hub lists {size} bytes"
    if path.suffix == ".bin":
        try:
            shard_token_count(path)
        except ValueError as e:
            return str(e)
    return None


def download(variant, train_shards, out_dir, repo_id=None, endpoint=None, log=say):
    """Fetch the whole validation split, the first train_shards train shards and the tokenizer of a variant into
    out_dir/datasets/fineweb10B_<variant>/ and out_dir/tokenizers/, skipping complete files. Returns the paths."""
    from huggingface_hub.utils import disable_progress_bars
    disable_progress_bars()
    repo_id = repo_id or DEFAULT_REPO[variant]
    listing = _hub_list(repo_id, endpoint)
    folder = f"datasets/fineweb10B_{variant}/"
    shards = {split: sorted(n for n in listing if n.startswith(f"{folder}fineweb_{split}_") and n.endswith(".bin"))
              for split in ("val", "train")}
    tokenizer = f"datasets/tokenizers/fineweb_{VARIANTS[variant]}_bpe"
    if not shards["val"] or tokenizer + ".model" not in listing:
        raise DataError(f"{repo_id} lists no {folder}fineweb_val_*.bin or no {tokenizer}.model")
    if len(shards["train"]) < train_shards:
        raise DataError(f"{repo_id} has {len(shards['train'])} train shards under {folder}, asked for {train_shards}")
    wanted = shards["val"] + shards["train"][:train_shards] + [tokenizer + ext for ext in (".model", ".vocab")
                                                               if tokenizer + ext in listing]
    out = Path(out_dir)
    data_dir, tok_dir, staging = out / folder, out / "tokenizers", out / ".hub-staging"
    local = {r: (data_dir if r.startswith(folder) else tok_dir) / Path(r).name for r in wanted}
    for i, remote in enumerate(wanted, 1):
        size, dest = listing[remote], local[remote]
        line = f"[{i}/{len(wanted)}] {remote} ({'size unknown' if size is None else f'{size / 1e6:.1f} MB'})"
        problem = _local_problem(dest, size)
        if problem is None:
            log(f"{line}: present, skipped")
            continue
        if dest.exists():
            dest.unlink()
            line += f" replacing an incomplete file ({problem})"
        t0 = time.time()
        _hub_fetch(repo_id, endpoint, remote, dest, staging)
        log(f"{line}: downloaded in {time.time() - t0:.1f} s")
    shutil.rmtree(staging, ignore_errors=True)
    bad = {local[r]: problem for r in wanted if (problem := _local_problem(local[r], listing[r]))}
    for path in bad:
        path.unlink(missing_ok=True)
    if bad:
        raise DataError(f"removed {len(bad)} corrupt download(s): " + "; ".join(bad.values()))
    paths = {"data_path": str(data_dir.resolve()), "tokenizer_path": str(local[tokenizer + ".model"].resolve())}
    log(f"DATA_PATH={paths['data_path']}\nTOKENIZER_PATH={paths['tokenizer_path']}\nVOCAB_SIZE={VARIANTS[variant]}")
    return paths


# ---------------------------------------------------------------- CLI

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser():
    p = _Parser(prog="data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("download", help="fetch the official shards and tokenizer from the Hugging Face hub",
                       description="Fetch the full validation split, the first N train shards and the tokenizer "
                       "into OUT/datasets/fineweb10B_<variant>/ and OUT/tokenizers/. Complete files are skipped; "
                       "incomplete ones are fetched again; every shard header is verified at the end.")
    d.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    d.add_argument("--train-shards", required=True, type=int, metavar="N", help="number of train shards (10^8 tokens each)")
    d.add_argument("--out", required=True, metavar="DIR")
    d.add_argument("--repo-id", help="dataset repo (default: " + ", ".join(f"{r} for {v}" for v, r in DEFAULT_REPO.items()) + ")")
    d.add_argument("--endpoint", metavar="URL", help="hub endpoint (default: HF_ENDPOINT or https://huggingface.co)")

    b = sub.add_parser("build", help="turn local text into shards",
                       description="Tokenize local documents into OUT/fineweb_val_000000.bin (the first --val-docs "
                       "documents) and OUT/fineweb_train_NNNNNN.bin (the rest). A document never straddles val and "
                       "train; train (and val) shards hold exactly --shard-tokens tokens except the last, so a "
                       "document may continue from one shard into the next.")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", metavar="FILE_OR_DIR", help="one document per file; a directory gives its *.txt files, sorted")
    src.add_argument("--jsonl", nargs="+", metavar="FILE", help="one document per line, from its \"text\" field")
    src.add_argument("--stdlib-corpus", action="store_true", help="docstrings of this Python's standard library, one document per module")
    tok = b.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", metavar="MODEL", help="existing SentencePiece model (bos_id must be 1)")
    tok.add_argument("--train-tokenizer", action="store_true", help="train a BPE model on the train documents, write OUT/tokenizer.model")
    b.add_argument("--vocab-size", type=int, default=1024, metavar="N", help="with --train-tokenizer (default: %(default)s)")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--val-docs", type=int, default=50, metavar="N", help="documents for validation (default: %(default)s)")
    b.add_argument("--shard-tokens", type=int, default=10**8, metavar="N", help="tokens per shard (default: %(default)s)")
    b.add_argument("--max-docs", type=int, metavar="N", help="use at most N documents")
    b.add_argument("--force", action="store_true", help="replace existing shards in OUT")
    hd = sub.add_parser("head", help="the first N val and train tokens of a data set, as a small data set for A/Bs",
                        description="Write the first --val-tokens validation and --train-tokens training tokens of "
                        "the shards in --data (in shard order) as OUT/fineweb_val_000000.bin and "
                        "OUT/fineweb_train_000000.bin. OUT must be new or empty.")
    hd.add_argument("--data", required=True, metavar="DIR", help="folder with fineweb_val_*.bin and fineweb_train_*.bin")
    hd.add_argument("--val-tokens", required=True, type=int, metavar="N")
    hd.add_argument("--train-tokens", required=True, type=int, metavar="N")
    hd.add_argument("--out", required=True, metavar="DIR")
    return p


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    try:
        if args.command == "download":
            if args.train_shards < 0:
                raise DataError("--train-shards must be >= 0")
            download(args.variant, args.train_shards, args.out, args.repo_id, args.endpoint)
            return 0
        if args.command == "head":
            if min(args.val_tokens, args.train_tokens) < 2:
                raise DataError("--val-tokens and --train-tokens must be >= 2")
            head(args.data, args.out, args.val_tokens, args.train_tokens)
            return 0
        if min(args.val_docs, args.shard_tokens) < 1 or (args.max_docs or 2) < 2 or not 0 < args.vocab_size <= 0x10000:
            raise DataError("need --val-docs >= 1, --shard-tokens >= 1, --max-docs >= 2, --vocab-size <= 65536")
        for path in args.text or args.jsonl or []:
            if not Path(path).exists():
                raise DataError(f"{path}: no such file or directory")
        if args.stdlib_corpus:
            docs = stdlib_corpus(args.max_docs)
        else:
            read = text_docs if args.text else jsonl_docs
            docs = Docs(lambda: itertools.islice(read(args.text or args.jsonl), args.max_docs))
        build(docs, args.out, args.tokenizer, args.vocab_size, args.val_docs, args.shard_tokens, args.force)
        return 0
    except (DataError, OSError, ValueError) as e:
        print(f"data.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
