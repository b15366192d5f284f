"""Score an artifact with and without test-time training, to tune TTT_* without retraining.

    python tools/ttt.py --log logs/RUN.txt --artifact final_model.ptz [--env TTT_LR=0.01 --env TTT_CHUNK=64]
                        [--val-tokens N] [--json out.json]

Builds the run's model from the hparam lines of its log (then --env), loads the weights from the artifact exactly as
train_gpt.py's final scoring does, and prints the plain score (non-overlapping windows of TRAIN_SEQ_LEN, the run's
final_roundtrip_plain), with EVAL_SLIDING=1 the sliding-window score (EVAL_SEQ_LEN, EVAL_STRIDE), the score with
test-time training (under the run's EVAL_BUDGET_SECONDS deadline, counted from the start of the TTT pass here and
planned with the rates a warm-up measures on random tokens, as the run's), the gain, the time of each, and the
documents whose adaptation went non-finite or that the deadline left unadapted. On this machine's CPU (or its first
GPU, with bf16 autocast, when there is one). Exit 0 on success, 1 with one line on failure, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import train_gpt as T  # noqa: E402
from runlog import parse_log  # noqa: E402


class Failure(Exception):
    pass


def score(args) -> dict:
    log = parse_log(args.log)
    if not log["hparams"]:
        raise Failure(f"{args.log} has no hparam lines: not a train_gpt.py log")
    overrides = dict(kv.split("=", 1) for kv in args.env)
    try:
        h = T.load_hparams({**log["hparams"], **overrides, "TTT": "1"})
        T.check_config(h, 1)
    except ValueError as e:
        raise Failure(str(e)) from None
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model = T.GPT(h).to(device)
    try:
        model.load_state_dict(T.load_artifact(str(args.artifact)), strict=True)
    except (ValueError, RuntimeError, OSError) as e:
        raise Failure(f"{args.artifact}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    val = T.load_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), h.vocab_size)
    if args.val_tokens:
        val = val[:args.val_tokens + 1]
    val, luts = val.to(device), T.byte_luts(sp, h.vocab_size, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def nll_fn(x, y):
        with torch.inference_mode(), autocast:
            return model(x, y, reduction="none")

    t0 = time.perf_counter()
    plain = T.evaluate(nll_fn, val, luts, h.train_seq_len, h.train_seq_len, h.eval_batch_seqs)[1]
    t1 = time.perf_counter()
    sliding = T.evaluate(nll_fn, val, luts, h.eval_seq_len, h.eval_stride, h.eval_batch_seqs)[1] if h.eval_sliding else None
    rates, deadline = None, None
    if h.eval_budget_seconds > 0:  # the run's warm-up (random tokens), its plan (TTT_PLAN) and deadline
        tokens = T.warm_up_documents(h, 1, h.vocab_size, sp.bos_id(), torch.Generator().manual_seed(0)).to(device)
        rates = T.ttt_warm_up(model, model, tokens, luts, h, sp.bos_id(), autocast, sync,
                              lambda r: val.numel() - 1 > r.adapted * h.ttt_plan * h.eval_budget_seconds)
        h.ttt_chunk = T.plan_chunk(rates, val.numel() - 1, 1, h.eval_budget_seconds, h.ttt_plan)[0]
        deadline = time.perf_counter() + h.eval_budget_seconds
    t2 = time.perf_counter()
    loss, bpb, info = T.evaluate_ttt(model, val, luts, h, sp.bos_id(), autocast, deadline=deadline,
                                     rates=rates and rates[h.ttt_chunk])
    t3 = time.perf_counter()
    return dict(plain_bpb=plain, sliding_bpb=sliding, ttt_bpb=bpb, gain_bpb=bpb - (plain if sliding is None else sliding),
                gain_vs="plain" if sliding is None else "sliding", plain_s=t1 - t0, sliding_s=t2 - t1, ttt_s=t3 - t2,
                docs=info["docs"], tokens=info["tokens"], nonfinite_docs=info["nonfinite"],
                unadapted_docs=info["unadapted"], window_tokens=info["window_tokens"],
                settings={k: getattr(h, k.lower()) for k in T.HPARAMS if k.startswith("TTT") or k.startswith("EVAL")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="the run's log (logs/RUN_ID.txt): its hparams")
    parser.add_argument("--artifact", type=Path, required=True, help="the run's final_model.ptz")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="override a hyperparameter (repeatable), e.g. TTT_LR=0.01")
    parser.add_argument("--val-tokens", type=int, default=0, help="score only the first N validation targets")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if any("=" not in kv for kv in args.env):
        parser.error("--env takes NAME=VALUE")
    if args.json and args.json.exists():
        parser.error(f"{args.json} exists: not overwriting it")
    try:
        result = score(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"plain val_bpb:{result['plain_bpb']:.4f} time:{result['plain_s']:.1f}s")
    if result["sliding_bpb"] is not None:
        print(f"sliding val_bpb:{result['sliding_bpb']:.4f} time:{result['sliding_s']:.1f}s")
    print(f"ttt   val_bpb:{result['ttt_bpb']:.4f} time:{result['ttt_s']:.1f}s gain_bpb:{result['gain_bpb']:+.4f} "
          f"vs:{result['gain_vs']} docs:{result['docs']} tokens:{result['tokens']} "
          f"nonfinite_docs:{len(result['nonfinite_docs'])} unadapted_docs:{len(result['unadapted_docs'])}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
