"""Build a records/track_*/YYYY-MM-DD_Name/ folder from seed logs, like the merged records' folders.

Every log is checked first (tools/check.py rules, with the source compared to --script where the log holds one);
any violation, a clash or an existing folder refuses the record and changes nothing. The logs may be this project's
or those of any generation tools/runlog.py reads (a real record folder's console logs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/record.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.check import ALPHA, add_rule_options, check_log, count_code, significance, violations
from tools.runlog import parse_log

LEADERBOARD_BEST = 1.05651  # val_bpb of #2135, 2026-05-01 (CHALLENGE.md)
TRACKS = ("10min_16mb", "non_record_16mb")
GENERATED = ("README.md", "submission.json", "train_gpt.py", "requirements.txt")
# submission.json's fields, in order: those the merged records #1855 and #2135 carry (a field without a value, such as
# the std of one seed, is left out)
FIELDS = ("author", "github_id", "name", "blurb", "date", "track", "val_loss", "val_bpb", "val_loss_std", "val_bpb_std",
          "seeds", "seed_results", "comparison_baseline_bpb", "delta_vs_leaderboard_bpb", "delta_vs_leaderboard_nats",
          "artifact_bytes_mean", "artifact_bytes_max", "bytes_total", "bytes_code", "train_steps_mean",
          "step_avg_ms_mean", "eval_time_s_mean", "eval_time_s_max", "hardware", "pytorch_version",
          "technique_summary", "p_value")


class RecordError(Exception):
    pass


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def seed_result(log: dict) -> dict:
    return {"val_loss": log["final_exact"]["val_loss"], "val_bpb": log["final_exact"]["val_bpb"],
            "artifact_bytes": log["submission_bytes"]["total"], "steps": log["steps"],
            "step_avg_ms": log["step_avg_ms"], "train_wallclock_ms": log["train_loop_ms"],
            "eval_time_s": log["eval_time_ms"] / 1000}


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


def build_readme(sub: dict, logs: list[dict], sig: dict, code, extras: list[str]) -> str:
    lines = [f"# {sub['name']}", "", sub["blurb"], "", "## Results", "",
             "| seed | val_loss | val_bpb | artifact bytes | steps | step_avg (ms) | train time (s) | eval time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for log, seed in zip(logs, sub["seeds"]):
        r = sub["seed_results"][str(seed)]
        lines.append(f"| {seed} | {r['val_loss']:.8f} | {r['val_bpb']:.8f} | {r['artifact_bytes']} | {r['steps']} "
                     f"| {r['step_avg_ms']:.2f} | {log['train_time_ms'] / 1000:.3f} | {r['eval_time_s']:.3f} |")
    std = (lambda v: "n/a" if v is None else f"{v:.8f}")
    lines += ["", f"Mean over {len(logs)} seed(s): val_loss {sub['val_loss']:.8f} (std {std(sub.get('val_loss_std'))}), "
                  f"val_bpb {sub['val_bpb']:.8f} (std {std(sub.get('val_bpb_std'))}); sample std (ddof=1). Train time "
                  "counts calibration on training data (#677).",
              f"Largest artifact: {sub['bytes_total']} bytes (code {sub['bytes_code']}).", "",
              f"Code bytes: {code.counted} as `tools/check.py` counts `train_gpt.py` by its own convention, "
              f"`{code.convention}` ({code.tools}); the readable script here ({code.plain} bytes) is what ran. "
              "`tools/check.py` recounts it without running it.", "",
              significance_text(sig), "", "## Configuration", ""]
    common = {k: v for k, v in logs[0]["hparams"].items() if all(log["hparams"].get(k) == v for log in logs)}
    varying = sorted({k for log in logs for k in log["hparams"]} - common.keys())
    lines += ["```", *(f"{k}={v}" for k, v in common.items()), "```", "",
              f"Set per run: {', '.join(varying) or 'nothing'}.", ""]
    if all(log["format"] == "ngpt" for log in logs):  # its hyperparameters are the environment variables it reads
        lines += ["## Commands", "", "```", *(_command(log) for log in logs), "```", ""]
    lines += ["## Hardware and versions", "", f"- hardware: {sub['hardware']}",
              f"- world_size: {_unique(log['world_size'] for log in logs)}, "
              f"grad_accum_steps: {_unique(log['grad_accum_steps'] for log in logs)}",
              f"- python {_unique(log['python'] or 'not logged' for log in logs)}, torch {sub['pytorch_version']}", "",
              "## Files", "", *(f"- `{log['path'].name}`" for log in logs), "- `train_gpt.py`",
              *(f"- `{name}`" for name in extras), ""]
    return "\n".join(lines)


def _text(value: str | None, option: str) -> str:
    if value is None or not value.strip():
        raise RecordError(f"{option} is empty: a record's text fields are never blank")
    return value.strip()


def _from_logs(logs: list[dict], key: str, given: str | None, option: str) -> str:
    """The logs' hardware or torch version (distinct values joined), else the option's; refused when neither, or when
    the option contradicts the logs."""
    logged = [log[key] for log in logs if log[key]]
    if given is not None and logged and {given} != set(logged):
        raise RecordError(f"{option} {given!r} contradicts the logs' {_unique(logged)!r}")
    if logged and len(logged) == len(logs):
        return _unique(logged)
    return _text(given, f"{option} (the logs do not name it)")


def _check_inputs(args: argparse.Namespace, dest: Path) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        raise RecordError(f"--name {args.name!r}: use letters, digits, '_', '.', '-'")
    if dest.exists():
        raise RecordError(f"{dest} already exists; refusing to overwrite")
    names = [p.name for p in args.logs]
    if len(set(names)) != len(names):
        raise RecordError("two logs share a file name")
    if args.ptz and len(args.ptz) != len(args.logs):
        raise RecordError(f"{len(args.ptz)} --ptz files for {len(args.logs)} logs")
    extras = [p.name for p in args.extra or []]
    clash = sorted(set(extras) & (set(names) | set(GENERATED))) or sorted({n for n in extras if extras.count(n) > 1})
    if clash:
        raise RecordError(f"--extra {clash[0]}: the folder already has a file of that name")
    for path in args.extra or []:
        if not path.is_file():
            raise RecordError(f"--extra {path}: not a file")


def make_record(args: argparse.Namespace) -> tuple[Path, dict]:
    date = datetime.date.fromisoformat(args.date).isoformat()
    dest = args.records_dir / f"track_{args.track}" / f"{date}_{args.name}"
    _check_inputs(args, dest)
    title, blurb = _text(args.title or args.name, "--title"), _text(args.blurb, "--blurb")
    author, github_id = _text(args.author, "--author"), _text(args.github_id, "--github-id")
    logs = [parse_log(p) for p in args.logs]
    unknown = [log["path"].name for log in logs if log["format"] is None]
    if unknown:
        raise RecordError(f"{unknown[0]}: format not recognized")
    bad = [f"{log['path'].name}: {row.describe()}" for log, ptz in zip(logs, args.ptz or [None] * len(logs))
           for row in violations(check_log(log, args.script, ptz, limit=args.limit, max_train_s=args.max_train_s,
                                           max_eval_s=args.max_eval_s, require_8xh100=args.require_8xh100,
                                           strict_cap=args.strict_cap))]
    if bad:
        raise RecordError(f"{len(bad)} rule violation(s): " + "; ".join(bad))
    seeds = [log["seed"] for log in logs]
    if None in seeds or len(set(seeds)) != len(seeds):
        raise RecordError(f"every log needs its own seed (`hparam SEED=`, `seed:`), got {seeds}")
    code = count_code(args.script)
    if code.counted is None:
        raise RecordError(f"train_gpt.py's code bytes ({code.convention}): {code.tools}")
    losses = [log["final_exact"]["val_loss"] for log in logs]
    bpbs = [log["final_exact"]["val_bpb"] for log in logs]
    best_scores = [parse_log(p)["final_exact"] for p in args.best_logs or []]
    if None in best_scores:
        raise RecordError("a --best-logs log has no score line")
    best_bpbs = [b["val_bpb"] for b in best_scores] if args.best_logs else None
    sig = significance(bpbs, losses, args.best, best_bpbs)
    sub = submission(args, logs, sig, code, title=title, blurb=blurb, author=author, github_id=github_id, date=date)
    write_folder(dest, args, logs, sub, build_readme(sub, logs, sig, code, [p.name for p in args.extra or []]))
    return dest, sig


def submission(args, logs: list[dict], sig: dict, code, **text) -> dict:
    """submission.json: the fields the merged records carry (#1855, #2135), computed from the logs."""
    losses = [log["final_exact"]["val_loss"] for log in logs]
    bpbs = [log["final_exact"]["val_bpb"] for log in logs]
    totals = [log["submission_bytes"]["total"] for log in logs]
    evals = [log["eval_time_ms"] / 1000 for log in logs]
    sub = {"author": text["author"], "github_id": text["github_id"], "name": text["title"], "blurb": text["blurb"],
           "date": text["date"], "track": args.track, "val_loss": statistics.mean(losses),
           "val_bpb": statistics.mean(bpbs), "val_loss_std": _std(losses), "val_bpb_std": _std(bpbs),
           "seeds": [log["seed"] for log in logs],
           "seed_results": {str(log["seed"]): seed_result(log) for log in logs}}
    best = sig["best_val_bpb"]
    if best is not None:
        delta = sub["val_bpb"] - best
        sub.update(comparison_baseline_bpb=best, delta_vs_leaderboard_bpb=delta,
                   delta_vs_leaderboard_nats=delta * statistics.mean(l / b for l, b in zip(losses, bpbs)))
    sub.update(artifact_bytes_mean=statistics.mean(totals), artifact_bytes_max=max(totals), bytes_total=max(totals),
               bytes_code=code.counted, train_steps_mean=statistics.mean(log["steps"] for log in logs),
               step_avg_ms_mean=statistics.mean(log["step_avg_ms"] for log in logs),
               eval_time_s_mean=statistics.mean(evals), eval_time_s_max=max(evals),
               hardware=_from_logs(logs, "hardware", args.hardware, "--hardware"),
               pytorch_version=_from_logs(logs, "torch", args.pytorch_version, "--pytorch-version"),
               technique_summary=_text(args.technique_summary or text["blurb"], "--technique-summary"),
               p_value=sig["p_value"])
    return {k: sub[k] for k in FIELDS if sub.get(k) is not None}


def write_folder(dest: Path, args, logs: list[dict], sub: dict, readme: str) -> None:
    """Build the folder beside its destination and rename it into place: complete or absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for path in [log["path"] for log in logs] + list(args.extra or []):
            shutil.copyfile(path, tmp / path.name)
        shutil.copyfile(args.script, tmp / "train_gpt.py")
        if args.requirements:
            shutil.copyfile(args.requirements, tmp / "requirements.txt")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(readme)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check seed logs and assemble a records/ submission folder.")
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="one train log per seed")
    parser.add_argument("--name", required=True, help="ShortName for the folder YYYY-MM-DD_ShortName")
    parser.add_argument("--title", help="the record's title: submission.json name, README heading (default: --name)")
    parser.add_argument("--author", required=True)
    parser.add_argument("--github-id", required=True)
    parser.add_argument("--blurb", required=True, help="one-paragraph description")
    parser.add_argument("--technique-summary", help="submission.json technique_summary (default: the blurb)")
    parser.add_argument("--track", choices=TRACKS, default=TRACKS[0])
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="YYYY-MM-DD (default today)")
    parser.add_argument("--script", type=Path, default=Path("train_gpt.py"),
                        help="train_gpt.py to copy; must equal the source in every log that holds one "
                        "(default %(default)s)")
    ptz = parser.add_mutually_exclusive_group(required=True)
    ptz.add_argument("--ptz", nargs="+", type=Path, help="one compressed model file per log, in order")
    ptz.add_argument("--ptz-bytes-from-log", action="store_true",
                     help="take model bytes from the logs instead of recounting .ptz files")
    parser.add_argument("--requirements", type=Path, help="requirements.txt to copy (omitted when not given)")
    parser.add_argument("--extra", nargs="+", type=Path, metavar="FILE",
                        help="other files the folder ships (a tokenizer, a helper source), copied as they are")
    parser.add_argument("--hardware", help="hardware, for logs that name none (e.g. '8xH100 80GB SXM')")
    parser.add_argument("--pytorch-version", help="torch version, for logs that name none")
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
