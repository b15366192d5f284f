#!/usr/bin/env python3
"""The whole pipeline on a small scale, with no download: data -> train -> export -> reload -> score -> check.

With no --data, builds an English corpus from this Python's standard library docstrings, trains a 1024-piece
SentencePiece tokenizer with the challenge's settings and writes challenge-format shards (tools/data.py build).
Then runs train_gpt.py through torchrun on a tiny configuration (1 process on a GPU, else 2 CPU processes) for
--seconds of training, checks the log and artifact with tools/check.py, and prints the score and where things are.
Any hyperparameter already set in the environment (NUM_LAYERS=..., ITERATIONS=...) overrides the demo's choice.
Everything goes under --out; nothing else is touched.
"""
import argparse
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runlog import parse_log
from tiny import DEMO as TINY  # the demo's configuration (tools/tiny.py)

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], **kw).returncode


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_run"), help="working folder (default: demo_run)")
    p.add_argument("--data", type=Path, help="existing shard folder (DATA_PATH) instead of the stdlib corpus")
    p.add_argument("--tokenizer", type=Path, help="SentencePiece model of --data (required with --data)")
    p.add_argument("--seconds", type=float, default=90.0, help="training wall clock, MAX_WALLCLOCK_SECONDS (default 90)")
    p.add_argument("--nproc", type=int, help="processes (default: 1 with a GPU, else 2)")
    args = p.parse_args(argv)
    if (args.data is None) != (args.tokenizer is None):
        p.error("--data and --tokenizer go together")
    import sentencepiece as spm
    import torch

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data:
        data_path, tokenizer = args.data.resolve(), args.tokenizer.resolve()
        if not tokenizer.is_file():
            sys.exit(f"demo.py: error: tokenizer {tokenizer} not found")
    else:
        data_path, tokenizer = out / "data", out / "data" / "tokenizer.model"
        if tokenizer.is_file() and any(data_path.glob("fineweb_val_*.bin")):
            print(f"[1/3] reusing the corpus in {data_path}", flush=True)
        else:
            print(f"[1/3] building a corpus from the standard library into {data_path}", flush=True)
            if run([sys.executable, ROOT / "tools" / "data.py", "build", "--stdlib-corpus", "--train-tokenizer",
                    "--vocab-size", "1024", "--val-docs", "40", "--out", data_path, "--force"]):
                sys.exit("demo.py: error: building the corpus failed (see above)")
    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()

    nproc = args.nproc or (1 if torch.cuda.is_available() else 2)
    env = {**TINY, "MAX_WALLCLOCK_SECONDS": str(args.seconds), "DATA_PATH": str(data_path),
           "TOKENIZER_PATH": str(tokenizer), "VOCAB_SIZE": str(vocab), **os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if out != ROOT:
        shutil.copy(ROOT / "train_gpt.py", out / "train_gpt.py")
    print(f"[2/3] training on {nproc} {'GPU' if torch.cuda.is_available() else 'CPU'} process(es) for up to {args.seconds:.0f} s",
          flush=True)
    if run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train_gpt.py"],
           cwd=out, env=env):
        sys.exit("demo.py: error: train_gpt.py failed (see above)")

    log = out / "logs" / f"{env['RUN_ID']}.txt"
    print("[3/3] checking the run against the rules", flush=True)
    checked = run([sys.executable, ROOT / "tools" / "check.py", log, "--script", out / "train_gpt.py",
                   "--ptz", out / "final_model.ptz"])
    result = parse_log(log)
    loss, bpb = result["final_exact"]["val_loss"], result["final_exact"]["val_bpb"]
    total = result["submission_bytes"]["total"]
    uniform = math.log2(vocab) * bpb * math.log(2) / loss  # log2(V) bits per token, times tokens per byte
    print(f"\nscore: val_bpb {bpb:.4f} (val_loss {loss:.4f} nats/token; a uniform guess over {vocab} pieces scores "
          f"{uniform:.4f})\nartifact: {total} bytes (train_gpt.py + final_model.ptz)\n"
          f"log: {log}\nartifact file: {out / 'final_model.ptz'}")
    if checked:
        sys.exit("demo.py: error: the run does not pass tools/check.py (see the table above)")


if __name__ == "__main__":
    main()
