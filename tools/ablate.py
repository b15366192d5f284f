"""Run an ablation: every variant of a set of env overrides on every seed, then compare the variants.

  python tools/ablate.py --variant base= --variant wn=SPHERE_OPT=wn,MUON_WD=0.04 --seeds 1 2 3 \\
      --env NUM_LAYERS=4 MODEL_DIM=128 DATA_PATH=/tmp/px --out ablate_runs/opt [--nproc 1] [--jobs 2]

Each (variant, seed) runs train_gpt.py in its own directory <out>/<variant>_s<seed>/ (its logs/,
final_model.ptz, stdout.txt, stderr.txt) with the environment: this process's, then --env, then the
variant's overrides, then SEED and RUN_ID=<variant>_s<seed>. Relative DATA_PATH / TOKENIZER_PATH (and
the script's defaults for them) are made absolute against the current directory. Runs start seed-major
(every variant for the first seed, then the second seed...), so a partial ablation stays balanced;
--jobs J keeps up to J runs going at once. The first variant is the reference: the table gives each
variant's mean +- std of the final (post-quantization) and pre-quantization val_bpb, the difference
from the reference and Welch's t-test p-value against it. JSON goes to <out>/ablate.json (or --json).
Exit 0 when every run succeeded, 1 when some failed, 2 for bad arguments (nothing runs).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/ablate.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.runlog import finite, parse_log

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")
PATH_KEYS = ("DATA_PATH", "TOKENIZER_PATH")  # resolved against the caller's directory, not the run's


class AblateError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- arguments

def parse_override(item: str) -> tuple[str, str]:
    """'KEY=VALUE' -> (KEY, VALUE); KEY must look like an env hyperparameter (A-Z, 0-9, _)."""
    key, eq, value = item.partition("=")
    if not eq or not KEY_RE.fullmatch(key):
        raise AblateError(f"{item!r} is not KEY=VALUE with KEY like NUM_LAYERS")
    return key, value


def parse_overrides(items) -> dict[str, str]:
    out = {}
    for item in items:
        key, value = parse_override(item)
        if key in out:
            raise AblateError(f"{key} is given twice in {', '.join(items)}")
        out[key] = value
    return out


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """'wn=SPHERE_OPT=wn,MUON_WD=0.04' -> ('wn', {'SPHERE_OPT': 'wn', 'MUON_WD': '0.04'}); 'base=' -> ('base', {})."""
    name, eq, rest = spec.partition("=")
    if not eq:
        raise AblateError(f"--variant {spec!r}: expected NAME=K1=V1,K2=V2 (or NAME= for no overrides)")
    if not NAME_RE.fullmatch(name):
        raise AblateError(f"--variant {spec!r}: the name must be letters, digits, '_', '-', '.'")
    try:
        return name, parse_overrides(rest.split(",")) if rest else {}
    except AblateError as e:
        raise AblateError(f"--variant {name}: {e}") from None


def script_defaults(script: Path) -> dict[str, str]:
    """The script's HPARAMS = dict(...) defaults that are string constants (no import, so no torch); {} if absent."""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8"))
    except (SyntaxError, OSError, UnicodeDecodeError):
        return {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HPARAMS" for t in node.targets)
                and isinstance(node.value, ast.Call)):
            return {kw.arg: kw.value.value for kw in node.value.keywords
                    if kw.arg and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)}
    return {}


def plan(args) -> dict:
    """Validate the arguments (AblateError names the first problem) and list the runs, seed-major."""
    variants = {}
    for spec in args.variant:
        name, overrides = parse_variant(spec)
        if name in variants:
            raise AblateError(f"variant {name!r} is given twice")
        variants[name] = overrides
    try:
        env = parse_overrides(args.env)
    except AblateError as e:
        raise AblateError(f"--env: {e}") from None
    taken = [k for k in ("SEED", "RUN_ID") if k in env or any(k in o for o in variants.values())]
    if taken:
        raise AblateError(f"{taken[0]} is set by the tool for every run; do not override it")
    if len(set(args.seeds)) != len(args.seeds):
        raise AblateError(f"a seed is repeated in --seeds {' '.join(map(str, args.seeds))}")
    if not args.script.is_file():
        raise AblateError(f"--script {args.script} does not exist")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise AblateError(f"--out {args.out} already exists and is not empty; choose a new directory")
    if args.json and args.json.exists():
        raise AblateError(f"--json {args.json} already exists; choose a new path")
    if args.nproc < 1 or args.jobs < 1:
        raise AblateError("--nproc and --jobs must be >= 1")
    script = args.script.resolve()
    launch = [sys.executable, str(script)] if args.nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc), str(script)]
    defaults = script_defaults(script)
    runs = []
    for seed in args.seeds:
        for name, overrides in variants.items():
            run_env = {**os.environ, **env, **overrides, "SEED": str(seed), "RUN_ID": f"{name}_s{seed}"}
            for key in PATH_KEYS:
                value = run_env.get(key, defaults.get(key))
                if value:
                    run_env[key] = os.path.abspath(value)
            runs.append({"variant": name, "seed": seed, "run_id": f"{name}_s{seed}",
                         "dir": args.out / f"{name}_s{seed}", "env": run_env})
    return {"variants": variants, "env": env, "launch": launch, "runs": runs}


# ---------------------------------------------------------------- running

def _last_line(text: str) -> str | None:
    """The last line that says 'error:', else the last non-empty line that is not a rule of '=' or '-'."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip().strip("=-")]
    errors = [ln for ln in lines if re.search(r"(^|\s)error:", ln)]
    return (errors or lines or [None])[-1]


def result(run: dict, returncode: int, seconds: float) -> dict:
    """Read a finished run's log and streams into the record the table and JSON use."""
    out = {k: run[k] for k in ("variant", "seed", "run_id")}
    out.update(dir=str(run["dir"]), returncode=returncode, ok=False, reason=None, pre_bpb=None, post_bpb=None,
               quant_gap=None, steps=None, step_avg_ms=None, seconds=round(seconds, 3))
    log_path = run["dir"] / "logs" / f"{run['run_id']}.txt"
    log = parse_log(log_path) if log_path.is_file() else None
    if log:
        final = log["final_exact"] or log["final_roundtrip"]
        out.update(pre_bpb=(log["pre_quant"] or {}).get("val_bpb"), post_bpb=final and final["val_bpb"],
                   quant_gap=log["quant_gap_bpb"], steps=log["steps"], step_avg_ms=log["step_avg_ms"])
    stderr = (run["dir"] / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    if returncode != 0:
        out["reason"] = ((log and log["errors"] and log["errors"][-1]) or _last_line(stderr)
                         or f"exit code {returncode}")
    elif log is None:
        out["reason"] = f"no log {log_path}"
    elif not finite(out["post_bpb"]):
        out["reason"] = (log["errors"][-1] if log["errors"] else
                         "the log has no final val_bpb" if out["post_bpb"] is None else f"final val_bpb is {out['post_bpb']}")
    out["ok"] = out["reason"] is None
    for key in ("pre_bpb", "post_bpb", "quant_gap", "step_avg_ms"):  # JSON has no NaN: a non-finite value is None
        out[key] = out[key] if finite(out[key]) else None
    return out


def run_all(runs: list[dict], launch: list[str], jobs: int, say=print) -> list[dict]:
    """Run every run (up to jobs at once, started in list order); results in list order. A worker takes the next
    run and says "start" under one lock, so the start lines come in list order too."""
    lock, total, queue = threading.Lock(), len(runs), iter(enumerate(runs))
    results: list[dict | None] = [None] * total
    stop, errors = threading.Event(), []

    def one(i, run):
        tag = f"[{i + 1}/{total}] {run['variant']} seed {run['seed']}"
        run["dir"].mkdir(parents=True)
        t0 = time.perf_counter()
        with open(run["dir"] / "stdout.txt", "wb") as out, open(run["dir"] / "stderr.txt", "wb") as err:
            try:
                code = subprocess.run(launch, cwd=run["dir"], env=run["env"], stdout=out, stderr=err).returncode
            except OSError as e:
                err.write(f"error: cannot start {launch[0]}: {e}\n".encode())
                code = -1
        res = result(run, code, time.perf_counter() - t0)
        with lock:
            status = f"val_bpb {res['post_bpb']:.4f}" if res["ok"] else f"FAILED: {res['reason']}"
            say(f"{tag}: {res['seconds']:.1f}s {status}", flush=True)
        return res

    def worker():
        while not stop.is_set():
            with lock:
                i, run = next(queue, (None, None))
                if run is None:
                    return
                say(f"[{i + 1}/{total}] {run['variant']} seed {run['seed']}: start", flush=True)
            try:
                results[i] = one(i, run)
            except Exception as e:  # a bug in the tool, not a failed run: stop starting runs and raise it
                errors.append(e)
                stop.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(jobs, total)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:  # Ctrl-C also reached the running children; start no more
        stop.set()
        raise
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------- summary

def _std(values):
    return statistics.stdev(values) if len(values) > 1 else None


def _mean(values):
    return statistics.mean(values) if values else None


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value; None with fewer than 2 values on a side or when undefined."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats  # here, so that --help and argument errors stay fast
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return float(p) if math.isfinite(p) else None


def summarize(results: list[dict], variants: list[str]) -> dict[str, dict]:
    """Per variant (the first is the reference): n_ok, n_runs, post/pre mean and std, diff of the post mean
    from the reference's, Welch p against the reference (None for the reference itself), mean ms/step."""
    ok = {v: [r for r in results if r["variant"] == v and r["ok"]] for v in variants}
    ref = [r["post_bpb"] for r in ok[variants[0]]]
    out = {}
    for v in variants:
        post, pre = [r["post_bpb"] for r in ok[v]], [r["pre_bpb"] for r in ok[v] if r["pre_bpb"] is not None]
        ms = [r["step_avg_ms"] for r in ok[v] if r["step_avg_ms"] is not None]
        mean = _mean(post)
        out[v] = {"n_ok": len(ok[v]), "n_runs": sum(r["variant"] == v for r in results),
                  "post_mean": mean, "post_std": _std(post), "pre_mean": _mean(pre), "pre_std": _std(pre),
                  "diff_vs_ref": None if mean is None or not ref else mean - statistics.mean(ref),
                  "p_vs_ref": None if v == variants[0] else welch_p(post, ref), "step_avg_ms": _mean(ms)}
    return out


def _fmt(value, spec=".4f"):
    return "-" if value is None else format(value, spec)


def format_table(summary: dict[str, dict]) -> str:
    rows = [("variant", "ok", "post val_bpb", "pre val_bpb", "diff vs ref", "p (Welch)", "ms/step")]
    for v, s in summary.items():
        rows.append((v, f"{s['n_ok']}/{s['n_runs']}", f"{_fmt(s['post_mean'])} +- {_fmt(s['post_std'])}",
                     f"{_fmt(s['pre_mean'])} +- {_fmt(s['pre_std'])}", _fmt(s["diff_vs_ref"], "+.4f"),
                     _fmt(s["p_vs_ref"], ".3g"), _fmt(s["step_avg_ms"], ".1f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="ablate", description="Run train_gpt.py for every variant x seed and compare the variants "
                     "(the first variant is the reference).", formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="example:\n  python tools/ablate.py --variant base= --variant lr=MATRIX_LR=0.02 "
                     "--seeds 1 2 3 --env NUM_LAYERS=4 --out ablate_runs/lr")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=K1=V1,K2=V2",
                        help="a variant and its env overrides (NAME= for none); repeat it; the first is the reference")
    parser.add_argument("--seeds", nargs="+", type=int, required=True, metavar="SEED", help="seeds to run each variant on")
    parser.add_argument("--env", nargs="+", default=[], metavar="K=V", help="env overrides common to every run")
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) directory for the runs and the JSON")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes per run: 1 runs `python SCRIPT`, more runs torch.distributed.run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs going at once (default 1)")
    parser.add_argument("--script", type=Path, default=Path("train_gpt.py"), help="default %(default)s")
    parser.add_argument("--json", type=Path, help="where to write the JSON (default <out>/ablate.json)")
    args = parser.parse_args(argv)
    try:
        p = plan(args)
    except AblateError as e:
        parser.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"ablate: {len(p['variants'])} variant(s) x {len(args.seeds)} seed(s) = {len(p['runs'])} runs, "
          f"seed-major, up to {args.jobs} at a time, in {args.out}", flush=True)
    try:
        results = run_all(p["runs"], p["launch"], args.jobs)
    except KeyboardInterrupt:
        print(f"ablate: interrupted; the runs so far are in {args.out}", file=sys.stderr)
        return 130
    summary = summarize(results, list(p["variants"]))
    print("\n" + format_table(summary))
    failed = [r for r in results if not r["ok"]]
    if failed:
        print("\nfailed runs:")
        for r in failed:
            print(f"  {r['run_id']} ({r['dir']}): {r['reason']}")
    command = sys.argv if argv is None else ["tools/ablate.py", *argv]
    report = {"command": shlex.join(["python", *command]), "cwd": os.getcwd(), "launch": p["launch"], "env": p["env"], "variants": p["variants"], "seeds": args.seeds,
              "reference": next(iter(p["variants"])), "runs": results, "summary": summary}
    json_path = args.json or args.out / "ablate.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"\nwrote {json_path}")
    if failed:
        print(f"ablate: {len(failed)} of {len(results)} runs failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
