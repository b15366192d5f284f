"""Build a records/track_*/YYYY-MM-DD_Name/ folder from seed logs.

Every log is checked first (tools/check.py rules, with the source compared to --script);
any violation, a clash or an existing folder refuses the record and changes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from scipy import stats

if __package__ in (None, ""):  # run as `python tools/record.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.check import add_rule_options, check_log, counted_code_bytes, violations
from tools.runlog import parse_log

LEADERBOARD_BEST = 1.05651  # val_bpb of #2135, 2026-05-01 (CHALLENGE.md)
THRESHOLD_NATS = 0.005
ALPHA = 0.01
TRACKS = ("10min_16mb", "non_record_16mb")


class RecordError(Exception):
    pass


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def seed_result(log: dict) -> dict:
    return {"val_loss": log["final_exact"]["val_loss"], "val_bpb": log["final_exact"]["val_bpb"],
            "artifact_bytes": log["submission_bytes"]["total"], "steps": log["steps"],
            "step_avg_ms": log["step_avg_ms"], "eval_time_s": log["eval_time_ms"] / 1000}


def significance(bpbs: list[float], losses: list[float], best: float | None = None,
                 best_bpbs: list[float] | None = None) -> dict:
    """One-sided test that the mean val_bpb beats the best by THRESHOLD_NATS (converted to bpb).

    The threshold in bpb is THRESHOLD_NATS times the mean val_bpb/val_loss ratio of our runs.
    With best_bpbs (another submission's seeds) Welch's t-test against them shifted down by the
    threshold; else a one-sample t-test against best - threshold. p_value is None when the test
    cannot be run.
    """
    ratio = statistics.mean(b / l for b, l in zip(bpbs, losses))
    threshold = THRESHOLD_NATS * ratio
    if best_bpbs is not None:
        best, test = statistics.mean(best_bpbs), "Welch's t-test (one-sided, unequal variances)"
    else:
        test = "one-sample t-test (one-sided)"
    out = {"test": test, "best_val_bpb": best, "threshold_nats": THRESHOLD_NATS, "threshold_bpb": threshold,
           "target_val_bpb": None if best is None else best - threshold, "p_value": None, "beats_best": None,
           "note": None}
    if len(bpbs) < 2 or (best_bpbs is not None and len(best_bpbs) < 2):
        out["note"] = "fewer than 2 seeds on a side: the significance test cannot be run"
    elif best is None:
        out["note"] = "no best score given: significance not tested"
    else:
        if best_bpbs is None:
            p = stats.ttest_1samp(bpbs, best - threshold, alternative="less").pvalue
        else:
            shifted = [b - threshold for b in best_bpbs]
            p = stats.ttest_ind(bpbs, shifted, equal_var=False, alternative="less").pvalue
        if math.isfinite(p):
            out.update(p_value=float(p), beats_best=bool(p < ALPHA))
        else:
            out["note"] = "zero variance across seeds: the t-test is undefined"
    return out


def _command(log: dict) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in log["hparams"].items())
    return f"{env} torchrun --standalone --nproc_per_node={log['world_size'] or 1} train_gpt.py".strip()


def _unique(values) -> str:
    return "; ".join(dict.fromkeys(str(v) for v in values))


def significance_text(sig: dict) -> str:
    if sig["p_value"] is None:
        return f"Significance: {sig['note']}."
    return (f"Significance, {sig['test']}: H1 mean val_bpb < {sig['best_val_bpb']:.8f} - "
            f"{sig['threshold_bpb']:.8f} bpb ({sig['threshold_nats']} nats) = {sig['target_val_bpb']:.8f}; "
            f"p = {sig['p_value']:.6g}; beats the best at p < {ALPHA}: {'yes' if sig['beats_best'] else 'no'}.")


def build_readme(sub: dict, logs: list[dict], sig: dict) -> str:
    lines = [f"# {sub['name']}", "", sub["blurb"], "", "## Results", "",
             "| seed | val_loss | val_bpb | artifact bytes | steps | step_avg (ms) | train time (s) | eval time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for log, seed in zip(logs, sub["seeds"]):
        r = sub["seed_results"][str(seed)]
        lines.append(f"| {seed} | {r['val_loss']:.8f} | {r['val_bpb']:.8f} | {r['artifact_bytes']} | {r['steps']} "
                     f"| {r['step_avg_ms']:.2f} | {log['train_time_ms'] / 1000:.3f} | {r['eval_time_s']:.3f} |")
    std = (lambda v: "n/a" if v is None else f"{v:.8f}")
    lines += ["", f"Mean over {len(logs)} seed(s): val_loss {sub['val_loss']:.8f} (std {std(sub['val_loss_std'])}), "
                  f"val_bpb {sub['val_bpb']:.8f} (std {std(sub['val_bpb_std'])}); sample std (ddof=1).",
              f"Largest artifact: {sub['bytes_total']} bytes (code {sub['bytes_code']}).", "",
              f"Code bytes are counted as the merged records #1855 and #2135 count them: the size of a self-extracting "
              f"wrapper of `train_gpt.py` (its AST without comments and docstrings, lzma, base85), which "
              f"`train_gpt.py` builds itself (`code_wrapper`) and logs as `code_bytes`; the readable script here "
              f"({sub['bytes_code_plain']} bytes, `code_bytes_plain`) is what ran. `tools/check.py` recounts both.", "",
              significance_text(sig), "", "## Configuration", ""]
    common = {k: v for k, v in logs[0]["hparams"].items() if all(log["hparams"].get(k) == v for log in logs)}
    varying = sorted({k for log in logs for k in log["hparams"]} - common.keys())
    lines += ["```", *(f"{k}={v}" for k, v in common.items()), "```", "",
              f"Set per run: {', '.join(varying) or 'nothing'}.", "", "## Commands", "", "```",
              *(_command(log) for log in logs), "```", "", "## Hardware and versions", "",
              f"- hardware: {sub['hardware']}",
              f"- world_size: {_unique(log['world_size'] for log in logs)}, "
              f"grad_accum_steps: {_unique(log['grad_accum_steps'] for log in logs)}",
              f"- python {_unique(log['python'] for log in logs)}, torch {sub['pytorch_version']}", "",
              "## Files", "", *(f"- `{log['path'].name}`" for log in logs), "- `train_gpt.py`", ""]
    return "\n".join(lines)


def make_record(args: argparse.Namespace) -> tuple[Path, dict]:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise RecordError(f"--name {args.name!r}: use letters, digits, '_', '.', '-'")
    date = datetime.date.fromisoformat(args.date).isoformat()
    dest = args.records_dir / f"track_{args.track}" / f"{date}_{args.name}"
    if dest.exists():
        raise RecordError(f"{dest} already exists; refusing to overwrite")
    names = [p.name for p in args.logs]
    if len(set(names)) != len(names):
        raise RecordError("two logs share a file name")
    if args.ptz and len(args.ptz) != len(args.logs):
        raise RecordError(f"{len(args.ptz)} --ptz files for {len(args.logs)} logs")
    logs = [parse_log(p) for p in args.logs]
    bad = [f"{log['path'].name}: {row.describe()}" for log, ptz in zip(logs, args.ptz or [None] * len(logs))
           for row in violations(check_log(log, args.script, ptz, limit=args.limit, max_train_s=args.max_train_s,
                                           max_eval_s=args.max_eval_s, require_8xh100=args.require_8xh100))]
    if bad:
        raise RecordError(f"{len(bad)} rule violation(s): " + "; ".join(bad))
    seeds = [log["hparams"].get("SEED") for log in logs]
    if None in seeds or len(set(seeds)) != len(seeds):
        raise RecordError(f"every log needs its own `hparam SEED=` line, got {seeds}")
    seeds = [int(s) for s in seeds]
    losses = [log["final_exact"]["val_loss"] for log in logs]
    bpbs = [log["final_exact"]["val_bpb"] for log in logs]
    best_bpbs = [parse_log(p)["final_exact"]["val_bpb"] for p in args.best_logs] if args.best_logs else None
    if best_bpbs is not None and None in best_bpbs:
        raise RecordError("a --best-logs log has no final_roundtrip_exact score")
    sig = significance(bpbs, losses, args.best, best_bpbs)
    sub = {"author": args.author, "github_id": args.github_id, "name": args.name, "blurb": args.blurb,
           "date": date, "track": args.track, "val_loss": statistics.mean(losses), "val_bpb": statistics.mean(bpbs),
           "val_loss_std": _std(losses), "val_bpb_std": _std(bpbs), "seeds": seeds,
           "seed_results": {str(s): seed_result(log) for s, log in zip(seeds, logs)},
           "bytes_total": max(log["submission_bytes"]["total"] for log in logs),
           "bytes_code": counted_code_bytes(args.script.read_text(encoding="utf-8")) or args.script.stat().st_size,
           "bytes_code_plain": args.script.stat().st_size, "hardware": _unique(log["hardware"] for log in logs),
           "pytorch_version": _unique(log["torch"] for log in logs),
           "technique_summary": args.technique_summary or args.blurb,
           "p_value": sig["p_value"], "beats_best": sig["beats_best"],
           "significance": {k: v for k, v in sig.items() if k not in ("p_value", "beats_best")}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for log in logs:
            shutil.copyfile(log["path"], tmp / log["path"].name)
        shutil.copyfile(args.script, tmp / "train_gpt.py")
        if args.requirements:
            shutil.copyfile(args.requirements, tmp / "requirements.txt")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(build_readme(sub, logs, sig))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, sig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check seed logs and assemble a records/ submission folder.")
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="one train log per seed")
    parser.add_argument("--name", required=True, help="ShortName for the folder YYYY-MM-DD_ShortName")
    parser.add_argument("--author", required=True)
    parser.add_argument("--github-id", required=True)
    parser.add_argument("--blurb", default="", help="one-paragraph description")
    parser.add_argument("--technique-summary", help="submission.json technique_summary (default: the blurb)")
    parser.add_argument("--track", choices=TRACKS, default=TRACKS[0])
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="YYYY-MM-DD (default today)")
    parser.add_argument("--script", type=Path, default=Path("train_gpt.py"),
                        help="train_gpt.py to copy; must equal the source in every log (default %(default)s)")
    ptz = parser.add_mutually_exclusive_group(required=True)
    ptz.add_argument("--ptz", nargs="+", type=Path, help="one compressed model file per log, in order")
    ptz.add_argument("--ptz-bytes-from-log", action="store_true",
                     help="take model bytes from the logs instead of recounting .ptz files")
    parser.add_argument("--requirements", type=Path, help="requirements.txt to copy (omitted when not given)")
    best = parser.add_mutually_exclusive_group()
    best.add_argument("--best", type=float, default=LEADERBOARD_BEST,
                      help="current best val_bpb to beat by 0.005 nats at p < 0.01 (default %(default)s)")
    best.add_argument("--best-logs", nargs="+", type=Path, metavar="LOG", help="the best submission's seed logs")
    parser.add_argument("--records-dir", type=Path, default=Path("records"), help="default %(default)s")
    add_rule_options(parser)
    args = parser.parse_args(argv)
    try:
        dest, sig = make_record(args)
    except (RecordError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(significance_text(sig))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
