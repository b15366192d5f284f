"""tools/data.py: shard I/O, `build`, and `download` against a local stand-in for the Hugging Face hub."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import sentencepiece as spm

import data

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "data.py"
REPO = "willdepueoai/parameter-golf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SP1024 = "datasets/fineweb10B_sp1024/"


def run_cli(*args, env=None, tmp_home=None):
    """Run tools/data.py as a subprocess; HF_HOME is kept out of the user's cache."""
    full_env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **(env or {})}
    if tmp_home:
        full_env["HF_HOME"] = str(tmp_home)
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=full_env)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data.py"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def shard_bytes(tokens, claimed_count=None):
    """A shard written independently of data.py, optionally with a lying header."""
    header = np.zeros(256, "<i4")
    header[:3] = 20240520, 1, len(tokens) if claimed_count is None else claimed_count
    return header.tobytes() + np.asarray(tokens, "<u2").tobytes()


def split_documents(tokens):
    """Split a BOS-prefixed token stream into per-document token lists (BOS dropped)."""
    assert tokens.size == 0 or tokens[0] == data.BOS_ID
    starts = np.flatnonzero(tokens == data.BOS_ID)
    return [part[1:].tolist() for part in np.split(tokens, starts[1:])] if tokens.size else []


def read_split(out, split):
    paths = sorted(Path(out).glob(f"fineweb_{split}_*.bin"))
    assert [p.name for p in paths] == [f"fineweb_{split}_{i:06d}.bin" for i in range(len(paths))]
    return paths, np.concatenate([data.read_shard(p) for p in paths])


def assert_documents(out, tokenizer, docs, val_docs):
    """Val shards hold exactly the first val_docs documents, train shards the rest, each decoding to its source."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    _, val = read_split(out, "val")
    _, train = read_split(out, "train")
    got = split_documents(val), split_documents(train)
    assert [len(got[0]), len(got[1])] == [val_docs, len(docs) - val_docs]
    for tokens, source in zip(got[0] + got[1], docs):
        assert sp.decode(tokens) == sp.decode(sp.encode(source))


# ---------------------------------------------------------------- shard I/O and corpus

def test_shard_roundtrip_and_header_checks(tmp_path):
    path = tmp_path / "fineweb_val_000000.bin"
    tokens = np.array([1, 0, 7, 65535, 1, 2], np.int64)
    data.write_shard(path, tokens)
    assert path.read_bytes() == shard_bytes(tokens)
    assert data.read_shard(path).tolist() == tokens.tolist()
    with pytest.raises(ValueError):
        data.write_shard(tmp_path / "x.bin", [65536])
    path.write_bytes(shard_bytes(tokens)[:-2])
    with pytest.raises(ValueError, match="fineweb_val_000000.bin"):
        data.read_shard(path)
    path.write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="magic"):
        data.read_shard(path)


def test_stdlib_corpus_is_deterministic_text(stdlib_docs):
    assert all(isinstance(doc, str) and doc.strip() for doc in stdlib_docs)
    assert data.stdlib_corpus(5) == stdlib_docs[:5]
    assert 100_000 < sum(map(len, stdlib_docs)) < 3_000_000


# ---------------------------------------------------------------- build

def test_tiny_shards_fixture(tiny_shards):
    for path in sorted(Path(tiny_shards.data_path).glob("fineweb_*.bin")):
        header = np.fromfile(path, "<i4", count=256)
        assert header[:2].tolist() == [20240520, 1] and not header[3:].any()
        assert path.stat().st_size == 1024 + 2 * int(header[2])
    assert 150_000 <= tiny_shards.summary["train_tokens"] <= 450_000  # loose: the stdlib differs between Pythons
    assert 15_000 <= tiny_shards.summary["val_tokens"] <= 50_000
    assert tiny_shards.vocab_size == 512
    assert_documents(tiny_shards.data_path, tiny_shards.tokenizer_path, tiny_shards.docs, tiny_shards.val_docs)


def test_build_jsonl_across_shards(tmp_path, stdlib_docs, tokenizer_path, capsys):
    docs = stdlib_docs[:3] + ["", "naïve café, 東京 🙂 x²"] + stdlib_docs[3:30]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n\n".join(json.dumps({"id": i, "text": d}) for i, d in enumerate(docs)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert data.main(["build", "--jsonl", str(jsonl), "--tokenizer", str(tokenizer_path), "--out", str(out),
                      "--val-docs", "4", "--shard-tokens", "4000"]) == 0
    assert f"DATA_PATH={out.resolve()}" in capsys.readouterr().out.splitlines()
    assert_documents(out, tokenizer_path, docs, 4)
    paths, _ = read_split(out, "train")
    sizes = [data.shard_token_count(p) for p in paths]
    assert len(sizes) >= 3 and set(sizes[:-1]) == {4000} and 0 < sizes[-1] <= 4000
    assert any(data.read_shard(p)[0] != data.BOS_ID for p in paths[1:])  # a document continues into the next shard


def test_build_trains_tokenizer_on_train_docs_only(tmp_path, stdlib_docs):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = ["zqxjvw " * 3000] + stdlib_docs[20:60] + ["vwjxqz " * 3000]  # one long line each
    for i, doc in enumerate(docs):
        (corpus / f"{i:03d}.txt").write_bytes(doc.encode("utf-8"))
    out = tmp_path / "out"
    result = run_cli("build", "--text", corpus, "--train-tokenizer", "--vocab-size", 400, "--val-docs", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    sp = data.load_tokenizer(out / "tokenizer.model")
    assert (sp.vocab_size(), sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (400, 0, 1, 2, 3)
    assert len(sp.encode("vwjxqz vwjxqz")) <= 3  # learned from a train document
    assert len(sp.encode("zqxjvw zqxjvw")) > 6  # the validation-only word was not
    assert sp.id_to_piece(sp.encode("東")[0]).startswith("<0x")  # byte fallback
    assert f"TOKENIZER_PATH={(out / 'tokenizer.model').resolve()}" in result.stdout.splitlines()
    assert_documents(out, out / "tokenizer.model", docs, 1)


def test_build_refuses_to_overwrite(tmp_path, tiny_corpus_dir, tokenizer_path):
    out = tmp_path / "out"
    args = ["build", "--text", tiny_corpus_dir, "--tokenizer", tokenizer_path, "--out", out, "--val-docs", 2,
            "--max-docs", 6]
    assert run_cli(*args, "--shard-tokens", 3000).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) > 3
    assert_one_line_error(run_cli(*args), "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run_cli(*args, "--force").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]


@pytest.mark.parametrize("command", [[], ["download"], ["build"], ["head"]])
def test_help_exits_zero(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: data.py" in result.stdout


def test_official_tokenizer_build(tmp_path, stdlib_docs, official_tokenizer):
    summary = data.build(stdlib_docs[:12], tmp_path, tokenizer=official_tokenizer, val_docs=3, log=lambda _: None)
    assert summary["vocab_size"] == 1024
    assert_documents(tmp_path, official_tokenizer, stdlib_docs[:12], 3)


@pytest.fixture(scope="module")
def wrong_bos_tokenizer(tmp_path_factory, stdlib_docs):
    path = tmp_path_factory.mktemp("wrong_bos") / "wrong.model"
    lines = [line for doc in stdlib_docs[:30] for line in doc.splitlines() if line.strip()]
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=f, vocab_size=200,
                                       bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
    return path


@pytest.mark.parametrize("case", ["missing-text", "missing-tokenizer", "wrong-bos", "jsonl-without-text"])
def test_build_bad_input_fails_with_one_line(tmp_path, tiny_corpus_dir, tokenizer_path, wrong_bos_tokenizer, case):
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    source, tokenizer, fragment = {
        "missing-text": (["--text", tmp_path / "nope.txt"], tokenizer_path, "nope.txt"),
        "missing-tokenizer": (["--text", tiny_corpus_dir], tmp_path / "nope.model", "nope.model"),
        "wrong-bos": (["--text", tiny_corpus_dir], wrong_bos_tokenizer, "bos_id"),
        "jsonl-without-text": (["--jsonl", bad_jsonl], tokenizer_path, "bad.jsonl:2"),
    }[case]
    out = tmp_path / "out"
    assert_one_line_error(run_cli("build", *source, "--tokenizer", tokenizer, "--out", out, "--val-docs", 1), fragment)
    assert not list(out.glob("*.bin"))


def test_build_output_loads_in_train_gpt(tiny_shards, tmp_path):
    if not (ROOT / "train_gpt.py").exists():
        pytest.skip("train_gpt.py does not exist yet")
    import torch
    import train_gpt
    for split in ("val", "train"):
        pattern = str(Path(tiny_shards.data_path) / f"fineweb_{split}_*.bin")
        loaded = train_gpt.load_tokens(pattern)
        assert isinstance(loaded, torch.Tensor)
        assert loaded.to(torch.int64).tolist() == read_split(tiny_shards.data_path, split)[1].tolist()
    bad = tmp_path / "fineweb_val_000000.bin"
    bad.write_bytes((Path(tiny_shards.data_path) / bad.name).read_bytes()[:-2])
    with pytest.raises(ValueError, match="fineweb_val_000000.bin"):
        train_gpt.load_tokens(str(bad))


# ---------------------------------------------------------------- download, against a stand-in hub

class HubStandIn(BaseHTTPRequestHandler):
    """Serves the three hub endpoints data.py uses: dataset info (with file sizes), HEAD and GET on resolve/."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def answer(self, send_body):
        files, path = self.server.files, unquote(urlsplit(self.path).path)
        self.server.requests.append((self.command, path))
        resolve = f"/datasets/{REPO}/resolve/main/"
        if path in (f"/api/datasets/{REPO}", f"/api/datasets/{REPO}/revision/main"):
            siblings = [{"rfilename": name, "size": len(body)} for name, body in files.items()]
            body, headers = json.dumps({"id": REPO, "sha": COMMIT, "siblings": siblings}).encode(), {
                "Content-Type": "application/json"}
        elif path.startswith(resolve) and path[len(resolve):] in files:
            body = files[path[len(resolve):]]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
        else:
            self.send_error(404)
            return
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


@pytest.fixture
def hub(tokenizer_path):
    rng = np.random.default_rng(0)
    files = {f"{SP1024}fineweb_{split}_{i:06d}.bin": shard_bytes(rng.integers(0, 1024, 3000 + 100 * i))
             for split, count in (("val", 2), ("train", 3)) for i in range(count)}
    files["datasets/fineweb10B_sp8192/fineweb_val_000000.bin"] = shard_bytes([1, 2, 3])
    files["datasets/tokenizers/fineweb_1024_bpe.model"] = Path(tokenizer_path).read_bytes()
    files["datasets/tokenizers/fineweb_1024_bpe.vocab"] = b"<pad>\t0\n"
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    server.files, server.requests = files, []
    server.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def fetch(hub, out, *extra, env=None):
    return run_cli("download", "--variant", "sp1024", "--train-shards", 2, "--out", out, "--endpoint", hub.url,
                   *extra, env=env, tmp_home=out.parent / "hf_home")


def expected_local_files(hub, out):
    """Local path -> served bytes for everything a 2-train-shard sp1024 download should produce."""
    wanted = [n for n in hub.files if n.startswith(SP1024) and "train_000002" not in n] + [
        n for n in hub.files if n.startswith("datasets/tokenizers/")]
    return {(out / n if n.startswith(SP1024) else out / "tokenizers" / Path(n).name): hub.files[n] for n in wanted}


def file_requests(hub):
    return [(method, path) for method, path in hub.requests if "/resolve/" in path]


def test_download_then_skip(hub, tmp_path):
    out = tmp_path / "data"
    result = fetch(hub, out)
    assert result.returncode == 0, result.stderr
    expected = expected_local_files(hub, out)
    assert {p: p.read_bytes() for p in expected} == expected
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(expected)  # no staging leftovers, no sp8192
    assert result.stdout.count("downloaded in") == len(expected) == 6
    assert f"DATA_PATH={(out / SP1024).resolve()}" in result.stdout.splitlines()
    assert f"TOKENIZER_PATH={(out / 'tokenizers/fineweb_1024_bpe.model').resolve()}" in result.stdout.splitlines()
    hub.requests.clear()
    again = fetch(hub, out)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("present, skipped") == 6 and file_requests(hub) == []


def test_download_refetches_interrupted_file(hub, tmp_path):
    out = tmp_path / "data"
    assert fetch(hub, out).returncode == 0
    shard = out / SP1024 / "fineweb_val_000001.bin"
    shard.write_bytes(shard.read_bytes()[:3000])  # what an interrupted copy leaves
    hub.requests.clear()
    result = fetch(hub, out)
    assert result.returncode == 0, result.stderr
    assert "replacing an incomplete file" in result.stdout
    assert shard.read_bytes() == hub.files[f"{SP1024}fineweb_val_000001.bin"]
    assert {path for _, path in file_requests(hub)} == {f"/datasets/{REPO}/resolve/main/{SP1024}fineweb_val_000001.bin"}


def test_download_reports_and_removes_corrupt_shard(hub, tmp_path):
    name = f"{SP1024}fineweb_val_000001.bin"
    hub.files[name] = shard_bytes(np.arange(100) % 1024, claimed_count=105)
    out = tmp_path / "data"
    assert_one_line_error(fetch(hub, out), "fineweb_val_000001.bin", "corrupt")
    assert not (out / name).exists() and (out / SP1024 / "fineweb_val_000000.bin").exists()


def test_download_too_many_train_shards(hub, tmp_path):
    result = run_cli("download", "--variant", "sp1024", "--train-shards", 4, "--out", tmp_path / "data",
                     "--endpoint", hub.url, tmp_home=tmp_path / "hf_home")
    assert_one_line_error(result, "has 3 train shards")


@pytest.mark.parametrize("offline_env", [{}, {"HF_HUB_OFFLINE": "1"}], ids=["refused", "HF_HUB_OFFLINE"])
def test_download_fails_fast_when_hub_unreachable(tmp_path, offline_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    out = tmp_path / "data"
    start = time.time()
    result = run_cli("download", "--variant", "sp1024", "--train-shards", 1, "--out", out,
                     "--endpoint", f"http://127.0.0.1:{closed_port}", env=offline_env, tmp_home=tmp_path / "hf_home")
    assert time.time() - start < 15
    assert_one_line_error(result, "could not reach the Hugging Face hub")
    assert not list(out.rglob("*.bin"))


def test_head_takes_the_first_tokens_across_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    val, train = np.arange(100, dtype=np.uint16), np.arange(1000, 1300, dtype=np.uint16)
    data.write_shard(src / "fineweb_val_000000.bin", val)
    data.write_shard(src / "fineweb_train_000000.bin", train[:120])
    data.write_shard(src / "fineweb_train_000001.bin", train[120:])
    out = tmp_path / "out"
    r = run_cli("head", "--data", src, "--val-tokens", 40, "--train-tokens", 200, "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(data.read_shard(out / "fineweb_val_000000.bin"), val[:40])
    assert np.array_equal(data.read_shard(out / "fineweb_train_000000.bin"), train[:200])  # 120 + 80 of the second
    again = run_cli("head", "--data", src, "--val-tokens", 4, "--train-tokens", 4, "--out", out)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "is not empty" in again.stderr
    short = run_cli("head", "--data", src, "--val-tokens", 40, "--train-tokens", 301, "--out", tmp_path / "short")
    assert short.returncode == 1 and "only 300 train tokens" in short.stderr and not (tmp_path / "short").exists()


def test_sp8192_defaults_to_the_records_repo(hub, tmp_path):
    """Without --repo-id, sp8192 is asked of kevclark/parameter-golf (where the records' sp8192 shards are); the
    stand-in hub serves only the sp1024 repo, so the download stops with one line naming the repo it asked."""
    result = run_cli("download", "--variant", "sp8192", "--train-shards", 1, "--out", tmp_path / "data",
                     "--endpoint", hub.url, tmp_home=tmp_path / "hf_home")
    assert result.returncode == 1 and "kevclark/parameter-golf" in result.stderr
    assert ("GET", "/api/datasets/kevclark/parameter-golf") in [(m, p.split("/revision")[0]) for m, p in hub.requests]
