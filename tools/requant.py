"""Export methods side by side: the same trained weights quantized by each method at equal bytes, and scored.

    python tools/requant.py table --log logs/RUN.txt --model final_model.pt --bytes-per-param 0.44
    python tools/requant.py standin --log logs/RUN.txt --model final_model.pt [--env NUM_LAYERS=11 ...]

table: loads the weights train_gpt.py saved (final_model.pt) into the run's model (shape and data from the hparam
lines of its log), collects GPTQ's Hessians from GPTQ_BATCHES training batches, and for each method writes an artifact
at equal bytes, reloads it and prints bytes, bytes per parameter, val_bpb before and after, and the gap (plain
windows of TRAIN_SEQ_LEN). rtn and gptq search the step to land within 0.5% below --bytes-per-param x parameters.
(The per-row clip method this table once compared left train_gpt.py after losing: README, "The artifact".)

standin: builds the model of the current defaults (train_gpt.py's HPARAMS, then --env), fills its matrices with values
drawn from the trained weights (each kind of block matrix from the same kind, standardized by row RMS; the embedding
with its row norms), random Hessians, and runs the real export against the real budget (16,000,000 bytes minus
train_gpt.py's bytes): the log line with its time, total bytes and bytes per parameter. Exit 0 on success, 1 with
one line on failure, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import train_gpt as T  # noqa: E402
from runlog import parse_log  # noqa: E402

METHODS = ("rtn", "gptq")


class Failure(Exception):
    pass


def load_run(log_path: Path, model_path: Path, overrides: dict[str, str]):
    log = parse_log(log_path)
    if not log["hparams"]:
        raise Failure(f"{log_path} has no hparam lines: not a train_gpt.py log")
    h = T.load_hparams({**log["hparams"], **overrides})
    model = T.GPT(h)
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except Exception as e:  # a missing file, a foreign pickle, other shapes
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise Failure(f"{model_path} does not load into the model of {log_path}: {reason}") from None
    return h, model


def hessians_of(model, h) -> dict:
    """GPTQ's Hessians from GPTQ_BATCHES micro-batches from the start of the training shards."""
    stream = T.TokenStream(T.shard_files(os.path.join(h.data_path, "fineweb_train_*.bin")), h.vocab_size)
    seqs = h.train_batch_tokens // (8 * h.train_seq_len)
    batches = (stream.batch(seqs, h.train_seq_len, 0, 1, "cpu") for _ in range(h.gptq_batches))
    return T.collect_hessians(model, batches, contextlib.nullcontext())


def table(args) -> None:
    h, model = load_run(args.log, args.model, dict(kv.split("=", 1) for kv in args.env))
    n = sum(p.numel() for p in model.parameters())
    budget = int(args.bytes_per_param * n)
    val = T.load_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), h.vocab_size)
    if args.val_tokens:
        val = val[:args.val_tokens + 1]
    import sentencepiece as spm
    luts = T.byte_luts(spm.SentencePieceProcessor(model_file=h.tokenizer_path), h.vocab_size, "cpu")

    @torch.no_grad()
    def score(m):
        return T.evaluate(lambda x, y: m(x, y, reduction="none"), val, luts, h.train_seq_len, h.train_seq_len, 32)[1]

    pre = score(model)
    t0 = time.perf_counter()
    hessians = hessians_of(model, h) if "gptq" in args.methods else None
    print(f"{n:,} parameters, budget {budget:,} bytes ({args.bytes_per_param} B/param); pre-quantization val_bpb "
          f"{pre:.4f} on {len(val) - 1:,} tokens; Hessians in {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"| method | model bytes | B/param | how | val_bpb before | after | gap |\n|---|---|---|---|---|---|---|")
    methods = sorted(args.methods, key=METHODS.index)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.ptz")
        for method in methods:
            h.quant_method, lines = method, []
            size = T.write_artifact(model, path, h, int(budget * (1 - T.BUDGET_WINDOW)), budget,
                                    hessians if method == "gptq" else None, lines.append)
            how = lines[0].split(f"method:{h.quant_method} ", 1)[1].split(" model_bytes")[0]
            m = T.GPT(h)
            m.load_state_dict(T.load_artifact(path))
            post = score(m)
            print(f"| {method} | {size:,} | {size / n:.4f} | {how} | {pre:.4f} | {post:.4f} | {post - pre:+.4f} |", flush=True)


def standin(args) -> None:
    _, trained = load_run(args.log, args.model, {})
    h = T.load_hparams(dict(kv.split("=", 1) for kv in args.env))
    torch.manual_seed(args.seed)
    model = T.GPT(h)
    pools = {}
    for name, p in trained.named_parameters():
        if p.ndim == 2:
            kind = "emb" if name == "emb.weight" else name.rsplit(".", 1)[-1]
            w = p.detach().float()
            pools.setdefault(kind, []).append((w / w.square().mean(-1, keepdim=True).sqrt()).flatten())
    emb_norms = trained.emb.weight.detach().float().norm(dim=-1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                kind = "emb" if name == "emb.weight" else name.rsplit(".", 1)[-1]
                pool = torch.cat(pools[kind])
                p.copy_(pool[torch.randint(len(pool), (p.numel(),))].view_as(p))
        model.renorm_()
        w = model.emb.weight
        w.mul_(emb_norms[torch.randint(len(emb_norms), (w.size(0), 1))] / w.norm(dim=-1, keepdim=True))
    hessians = None
    if h.quant_method == "gptq":
        hessians = {}
        for name, p in model.named_parameters():
            if p.ndim == 2:
                d = p.size(0) if name.rsplit(".", 1)[-1] in T.INPUT_ROWS else p.size(1)
                x = torch.randn(2 * d, d)
                hessians[T.hessian_name(name)] = x.T @ x
    code = len(T.code_wrapper((ROOT / "train_gpt.py").read_text(encoding="utf-8")).encode("utf-8"))  # as counted
    n = sum(p.numel() for p in model.parameters())
    print(f"stand-in: {n:,} parameters ({h.num_layers} x {h.model_dim}, MLP {h.mlp_mult}, vocab {h.vocab_size}), "
          f"code {code:,} bytes, torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        size = T.write_artifact(model, os.path.join(tmp, "m.ptz"), h, int(T.SIZE_LIMIT * (1 - T.BUDGET_WINDOW)) - code,
                                T.SIZE_LIMIT - code, hessians, lines.append)
    print(lines[0])
    print(f"total {code + size:,} bytes (window {int(T.SIZE_LIMIT * (1 - T.BUDGET_WINDOW)):,}..{T.SIZE_LIMIT:,}), "
          f"{size / n:.4f} model bytes per parameter")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("table", "standin"):
        s = sub.add_parser(name)
        s.add_argument("--log", type=Path, required=True, help="the train_gpt.py log of the run")
        s.add_argument("--model", type=Path, required=True, help="final_model.pt that run saved")
        s.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="hyperparameter overrides")
    t = sub.choices["table"]
    t.add_argument("--bytes-per-param", type=float, default=0.44, help="budget per parameter (default: %(default)s)")
    t.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    t.add_argument("--val-tokens", type=int, default=0, help="score on the first N validation tokens (0: all)")
    sub.choices["standin"].add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bad = [kv for kv in args.env if "=" not in kv or kv.split("=", 1)[0] not in T.HPARAMS]
    if bad:
        p.error(f"--env takes NAME=VALUE with NAME a hyperparameter of train_gpt.py: {bad}")
    try:
        (table if args.command == "table" else standin)(args)
    except (Failure, ValueError, OSError) as e:
        print(f"requant.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
