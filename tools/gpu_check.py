#!/usr/bin/env python3
"""Check the harness on one CUDA GPU in one command, logging everything to one folder.

  python tools/gpu_check.py --data DIR --tokenizer FILE --out DIR             # one CUDA GPU, fits 10 minutes
  python tools/gpu_check.py --data DIR --tokenizer FILE --out DIR --dry-run   # any CPU machine, under a minute

Steps, in this order (each one's stdout and stderr go to NN_<step>.stdout.txt / .stderr.txt in --out):

  1 gpu_tests   python -m pytest -q -m gpu                     the test suite's GPU tests
  2 bench       python tools/bench.py                          nGPT vs standard at the default shape: ms/step, MFU
  3 bench_eval  python tools/bench.py --mode eval              sliding-window tokens/s, projected time on 8 GPUs
  4 train       MAX_WALLCLOCK_SECONDS=<--train-seconds> torchrun --standalone --nproc_per_node=1 train_gpt.py
                on --data / --tokenizer, in --out/train/ (a copy of train_gpt.py; its log is train/logs/gpu_check.txt)
  5 check       python tools/check.py <train log> --script train/train_gpt.py --ptz train/final_model.ptz
                --max-train-s <--train-seconds>                (the 8x H100 requirement off)

Every step runs even when an earlier one failed (check needs the train log and says so when there is none). Each
step's exit status and time are recorded; a failed step shows in the summary table and the tool exits 1 at the end
with a one-line reason (2: bad arguments, refused before anything runs). The whole command stays within --budget-s: the train and check steps keep their reserved
time, the steps before them share the rest, and a step that runs out of time is killed and reported as a timeout.
At the end it prints the summary (also in summary.md, and every number in summary.json) read from bench.py's final
JSON lines and from the train log (tools/runlog.parse_log).

--dry-run (CPU, no CUDA needed, for CI): bench, bench_eval and train really run, at a tiny shape for a few steps on
the CPU, and check runs on that tiny log; the steps that need CUDA are reported as "would run: <exact command>"
(the GPU tests, listed by name, and the default-shape benchmarks and the capped training run). The summary comes from
what ran. Hyperparameters set in the environment (NUM_LAYERS=..., COMPILE=0, ...) reach bench.py and train_gpt.py
in a full run; in a dry run the tiny settings win.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/gpu_check.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.runlog import parse_log, split_source

T_START = time.monotonic()  # run as a script, --budget-s counts from here: argument checks and torch import included
ROOT = Path(__file__).resolve().parents[1]
PROG = "gpu_check.py"
RUN_ID = "gpu_check"
INNER_ENV = "GPU_CHECK_RUNNING"  # set for the steps' processes: a test that would start gpu_check again skips itself
MIN_STEP_S = 5.0  # a step with less time than this left is not started
KILL_GRACE_S = 5.0
# The schedule's defaults suit a ~5,000-step 8x H100 run. 300 s on one H100 is some 300 steps at the default shape
# (PR #1108: 119 ms/step on 8 GPUs; one GPU accumulates 8 micro-batches), so the train step scales them to that
# length (the fractions the CPU A/Bs measured); the same variables set in the environment win.
SHORT_SCHEDULE = dict(WARMDOWN_ITERS="250", MUON_MOMENTUM_WARMUP_STEPS="90")

# dry run: tiny CPU stand-ins (the shape of tests/test_bench.py and tests/conftest.py)
TINY_SHAPE = dict(NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", TRAIN_SEQ_LEN="64",
                  EVAL_STRIDE="16", EVAL_BATCH_SEQS="4")
TINY_BENCH = ["--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-tokens", "512"]
TINY_BENCH_EVAL = ["--mode", "eval", "--device", "cpu", "--warmup", "1", "--eval-tokens", "1024"]
TINY_TRAIN = dict(TINY_SHAPE, TRAIN_BATCH_TOKENS="4096", ITERATIONS="8", WARMUP_STEPS="1", WARMDOWN_ITERS="4",
                  VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="1", EVAL_STRIDE="32", EVAL_BATCH_SEQS="32",
                  VAL_BATCH_SIZE="65536", MUON_MOMENTUM_WARMUP_STEPS="4")


# ----------------------------------------------------------------------------------------------- steps


@dataclass
class Step:
    name: str
    title: str
    cmd: list[str] | None  # what runs; None: nothing runs here (dry run of a CUDA-only step)
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of os.environ; shown in the command line
    cap_s: float = 60.0  # longest this step may run
    reserve_s: float = 0.0  # time kept for this step while the steps before it run
    would_run: str | None = None  # dry run: the exact command a full run executes
    requires: Path | None = None  # a file the step needs (the train log for check)
    markers: tuple[str, ...] = ()  # stdout line prefixes whose first arrival time is recorded
    stdout: Path | None = None
    stderr: Path | None = None
    # results
    status: str = "pending"  # ok, failed, timeout, not run, would run
    rc: int | None = None
    seconds: float | None = None
    timeout_s: float | None = None
    note: str = ""
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timeout", "not run")

    def command_line(self) -> str:
        return shell_line(self.cmd, self.cwd, self.env) if self.cmd else ""

    def outcome(self) -> str:
        """One phrase: 'ok', 'exit 1', 'timeout after 90 s', 'not run: why', 'would run'."""
        if self.status == "failed":
            return f"exit {self.rc}"
        if self.status == "timeout":
            return f"timeout after {self.timeout_s:.0f} s"
        if self.status == "not run":
            return f"not run: {self.note}"
        return self.status

    def detail(self) -> str:
        """outcome(), with the stderr hint of a failed or timed-out step."""
        hint = self.note if self.status in ("failed", "timeout") and self.note else ""
        return self.outcome() + (f": {hint}" if hint else "")


MODELS = (("ngpt", "nGPT"), ("angpt", "anGPT"), ("standard", "standard"))  # the bench's three models

def shell_line(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """`cd CWD && K=V ... argv`, quoted for a POSIX shell: the exact command, pasteable."""
    assign = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return f"cd {shlex.quote(str(cwd))} && " + " ".join(assign + [shlex.quote(str(c)) for c in cmd])


def gpu_marked_tests(tests_dir: Path = ROOT / "tests") -> list[str]:
    """Node ids of the tests marked @pytest.mark.gpu (found by reading the files, not by importing them)."""
    def is_gpu(node) -> bool:
        node = node.func if isinstance(node, ast.Call) else node
        return isinstance(node, ast.Attribute) and node.attr == "gpu" and (
            isinstance(node.value, ast.Attribute) and node.value.attr == "mark")

    def marks_of(value) -> list:
        return list(value.elts) if isinstance(value, (ast.List, ast.Tuple)) else [value]

    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        module_gpu = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
                         and any(is_gpu(m) for m in marks_of(n.value)) for n in tree.body)
        rel = path.relative_to(tests_dir.parent).as_posix()

        def visit(body, prefix: str, inherited: bool):
            for n in body:
                if isinstance(n, ast.ClassDef) and n.name.startswith("Test"):
                    visit(n.body, f"{prefix}{n.name}::", inherited or any(is_gpu(d) for d in n.decorator_list))
                elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test"):
                    if inherited or any(is_gpu(d) for d in n.decorator_list):
                        found.append(f"{rel}::{prefix}{n.name}")
        visit(tree.body, "", module_gpu)
    return found


def plan(args) -> list[Step]:
    """The five steps, with commands, environments, time caps and log paths."""
    py, out = sys.executable, args.out
    train_dir = out / "train"
    log = train_dir / "logs" / f"{RUN_ID}.txt"
    train_env = {**{k: os.environ.get(k, v) for k, v in SHORT_SCHEDULE.items()},
                 "MAX_WALLCLOCK_SECONDS": f"{args.train_seconds:g}", "DATA_PATH": str(args.data),
                 "TOKENIZER_PATH": str(args.tokenizer), "VOCAB_SIZE": str(args.vocab_size), "RUN_ID": RUN_ID}
    launcher = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"]
    full = {
        "gpu_tests": ([py, "-m", "pytest", "-q", "-m", "gpu"], ROOT, {}),
        "bench": ([py, "tools/bench.py"], ROOT, {}),
        "bench_eval": ([py, "tools/bench.py", "--mode", "eval"], ROOT, {}),
        "train": (launcher, train_dir, train_env),
    }
    check_cmd = [py, "tools/check.py", str(log), "--script", str(train_dir / "train_gpt.py"),
                 "--ptz", str(train_dir / "final_model.ptz"), "--max-train-s", f"{args.train_seconds:g}"]
    titles = {"gpu_tests": "the test suite's GPU tests", "bench": "nGPT vs standard training step time and MFU",
              "bench_eval": "sliding-window eval speed, 8-GPU projection",
              "train": f"train_gpt.py capped at {args.train_seconds:g} s on --data",
              "check": "tools/check.py on the train log"}
    steps = []
    if not args.dry_run:
        for name, (cmd, cwd, env) in full.items():
            if name == "train":
                steps.append(Step(name, titles[name], cmd, cwd, env, markers=("model_params:", "warmup_steps:"),
                                  cap_s=args.train_seconds + args.train_overhead_s,
                                  reserve_s=args.train_seconds + args.train_overhead_s))
            else:
                steps.append(Step(name, titles[name], cmd, cwd, env, cap_s=args.step_cap_s))
        steps.append(Step("check", titles["check"], check_cmd, ROOT, cap_s=args.check_reserve_s,
                          reserve_s=args.check_reserve_s, requires=log))
    else:
        one_thread = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        gpu_tests = gpu_marked_tests()
        steps.append(Step("gpu_tests", titles["gpu_tests"], None, ROOT, would_run=shell_line(*full["gpu_tests"]),
                          note=f"{len(gpu_tests)} GPU-marked test(s): " + ", ".join(gpu_tests)))
        steps.append(Step("bench", titles["bench"], [py, "tools/bench.py", *TINY_BENCH], ROOT,
                          {**one_thread, **TINY_SHAPE}, cap_s=args.step_cap_s, would_run=shell_line(*full["bench"])))
        steps.append(Step("bench_eval", titles["bench_eval"], [py, "tools/bench.py", *TINY_BENCH_EVAL], ROOT,
                          {**one_thread, **TINY_SHAPE}, cap_s=args.step_cap_s,
                          would_run=shell_line(*full["bench_eval"])))
        steps.append(Step("train", titles["train"], launcher, train_dir,
                          {**one_thread, "CUDA_VISIBLE_DEVICES": "", **train_env, **TINY_TRAIN},
                          markers=("model_params:", "warmup_steps:"), cap_s=args.step_cap_s, reserve_s=60.0,
                          would_run=shell_line(*full["train"])))
        steps.append(Step("check", titles["check"], check_cmd, ROOT, cap_s=args.check_reserve_s,
                          reserve_s=args.check_reserve_s, requires=log))
    for i, step in enumerate(steps, 1):
        if step.cmd:
            step.stdout, step.stderr = (out / f"{i:02d}_{step.name}.{kind}.txt" for kind in ("stdout", "stderr"))
    return steps


# ----------------------------------------------------------------------------------------------- running


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (torchrun and the ranks it started), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, timeout: float, echo=print) -> None:
    """Run one step with its own process group, stdout/stderr into its files; fills status, rc, seconds, marks."""
    step.timeout_s = timeout
    echo(f"  $ {step.command_line()}")
    env = {**os.environ, INNER_ENV: "1", **step.env}
    step.cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(step.stdout, "w", encoding="utf-8") as out, open(step.stderr, "w", encoding="utf-8") as err:
        proc = subprocess.Popen([str(c) for c in step.cmd], cwd=step.cwd, env=env, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                start_new_session=True)

        def pump():  # copy stdout to its file, noting when each marker line first arrives
            try:
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    for marker in step.markers:
                        if marker not in step.marks and line.startswith(marker):
                            step.marks[marker] = time.monotonic() - t0
            except (OSError, ValueError):  # the file was closed after a kill left a grandchild holding the pipe
                pass
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            step.rc = proc.wait(timeout=timeout)
            step.status = "ok" if step.rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(proc)
            step.rc, step.status = proc.returncode, "timeout"
        except BaseException:  # Ctrl-C: take the step's processes down with us
            _kill(proc)
            raise
        finally:
            reader.join(timeout=KILL_GRACE_S)
            step.seconds = time.monotonic() - t0


def run_steps(steps: list[Step], budget_s: float, echo=print) -> None:
    """Run the steps in order within budget_s seconds. Each gets min(its cap, what is left minus the time reserved
    for the steps after it); a step left with under MIN_STEP_S, or whose required file is missing, is not run."""
    deadline = time.monotonic() + budget_s
    for i, step in enumerate(steps):
        echo(f"[{i + 1}/{len(steps)}] {step.name}: {step.title}")
        if step.cmd is None:
            step.status = "would run"
            echo(f"  would run: {step.would_run}" + (f"  ({step.note})" if step.note else ""))
            continue
        if step.requires is not None and not step.requires.exists():
            producer = next((s for s in steps[:i] if s.name == "train"), None)
            step.status = "not run"
            step.note = f"{step.requires} missing" + (f" (train: {producer.outcome()})" if producer else "")
            echo(f"  {step.outcome()}")
            continue
        left = deadline - time.monotonic() - sum(s.reserve_s for s in steps[i + 1:] if s.cmd is not None)
        timeout = min(step.cap_s, left)
        if left < MIN_STEP_S:
            step.status, step.note = "not run", f"only {max(left, 0):.0f} s of --budget-s left for it"
            echo(f"  {step.outcome()}")
            continue
        run_step(step, timeout, echo)
        if step.failed:
            step.note = error_hint(step.stderr)
        echo(f"  {step.outcome()} in {step.seconds:.1f} s (limit {timeout:.0f} s); logs: {step.stdout.name}, "
             f"{step.stderr.name}" + (f"\n  stderr: {step.note}" if step.note else ""))
        if step.would_run:
            echo(f"  would run (full, needs CUDA): {step.would_run}")


def error_hint(path: Path | None, width: int = 200) -> str:
    """The first `error: ...` line of a step's stderr (train_gpt.py, bench.py, check.py's FAIL lines), else its last
    non-empty line, shortened to width characters; '' when there is none."""
    if path is None or not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    line = next((ln for ln in lines if re.search(r"(^|: )error: |^FAIL ", ln)), lines[-1] if lines else "")
    return line if len(line) <= width else line[:width - 3] + "..."


def failure_reason(steps: list[Step]) -> str | None:
    bad = [f"{s.name} ({s.outcome()})" for s in steps if s.failed]
    return f"{len(bad)} of {len(steps)} steps failed: " + ", ".join(bad) if bad else None


# ----------------------------------------------------------------------------------------------- results


def last_json(path: Path | None) -> dict | None:
    """The last line of a file that is a JSON object (bench.py's result line), else None."""
    if path is None or not path.exists():
        return None
    for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
        if line:
            return None
    return None


def pytest_result(path: Path | None) -> str | None:
    """pytest -q's final line, e.g. '1 passed, 1 skipped in 80.12s'."""
    if path is None or not path.exists():
        return None
    lines = [ln.strip().strip("=").strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return next((ln for ln in reversed(lines) if re.search(r"\b(passed|failed|skipped|error|errors|deselected|"
                                                             r"no tests ran)\b.* in [\d.]+s", ln)), None)


def train_results(step: Step, log_path: Path) -> dict | None:
    """Everything the summary needs from the train log (parse_log) and the train step's stdout timings."""
    if not log_path.exists():
        return None
    log = parse_log(log_path)
    _, body = split_source(log_path.read_text(encoding="utf-8", errors="replace"))
    peak = re.search(r"(?m)^peak_memory (.*)$", body)
    warm = None
    if "model_params:" in step.marks and "warmup_steps:" in step.marks:
        warm = step.marks["warmup_steps:"] - step.marks["model_params:"]
    total = log["train_steps"][-1]["total"] if log["train_steps"] else None
    scores = lambda d: None if d is None else dict(d)  # noqa: E731
    return {"log": str(log_path), "hardware": log["hardware"], "torch": log["torch"],
            "world_size": log["world_size"], "model_params": log["model_params"],
            "compile": log["hparams"].get("COMPILE"), "warmup_steps": log["hparams"].get("WARMUP_STEPS"),
            "max_wallclock_seconds": log["hparams"].get("MAX_WALLCLOCK_SECONDS"),
            "steps": log["steps"], "iterations": total, "stopped_early": log["stopping_early"] is not None,
            "train_time_ms": log["train_time_ms"], "step_avg_ms": log["step_avg_ms"],
            "warmup_s": warm, "peak_memory": peak.group(1).strip() if peak else None,
            "pre_quant": scores(log["pre_quant"]), "roundtrip_plain": scores(log["roundtrip_plain"]),
            "quant_gap_bpb": log["quant_gap_bpb"], "final_roundtrip": scores(log["final_roundtrip"]),
            "final_exact": scores(log["final_exact"]), "eval_phase_time_ms": log["eval_phase_time_ms"],
            "submission_bytes": log["submission_bytes"], "errors": log["errors"]}


def check_results(step: Step) -> dict | None:
    if step.status not in ("ok", "failed"):
        return None
    fails = [ln.strip() for ln in step.stderr.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.startswith("FAIL ")] if step.stderr.exists() else []
    return {"passed": step.rc == 0, "exit": step.rc, "violations": fails}


def collect(steps: list[Step], args) -> dict:
    by = {s.name: s for s in steps}
    ran = lambda name: by[name].cmd is not None and by[name].status in ("ok", "failed", "timeout")  # noqa: E731
    tests = by["gpu_tests"]
    return {
        "gpu_tests": {"result": pytest_result(tests.stdout) if ran("gpu_tests") else None,
                      "selected": None if tests.cmd else tests.note},
        "bench": last_json(by["bench"].stdout) if ran("bench") else None,
        "bench_eval": last_json(by["bench_eval"].stdout) if ran("bench_eval") else None,
        "train": train_results(by["train"], args.out / "train" / "logs" / f"{RUN_ID}.txt"),
        "check": check_results(by["check"]),
    }


def _f(value, fmt: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else str(value)
    return format(value, fmt) + unit


def table(results: dict, steps: list[Step], dry: bool) -> list[tuple[str, str, str]]:
    """(metric, value, from) rows of the summary; 'n/a' where the step did not produce the number."""
    by = {s.name: s for s in steps}

    def src(name: str) -> str:
        if not dry or by[name].cmd is None:
            return name
        return name + (" (on the tiny run's log)" if name == "check" else " (tiny CPU stand-in)")
    rows = []
    tests = results["gpu_tests"]
    rows.append(("GPU tests", tests["result"] or ("would run" if dry else f"n/a ({by['gpu_tests'].outcome()})"),
                 "gpu_tests"))
    b = results["bench"] or {}
    if b:
        shape = b.get("shape", {})
        rows.append(("bench hardware, shape",
                     f"{b.get('hardware')}, L{shape.get('num_layers')} d{shape.get('model_dim')} "
                     f"h{shape.get('num_heads')}/{shape.get('num_kv_heads')} T{shape.get('train_seq_len')} "
                     f"{shape.get('batch_tokens')} tokens/step, compile {b.get('compile')}", src("bench")))
    for name, label in MODELS:
        m = b.get(name) or {}
        ms = (f"{m['ms_median']:.2f} (IQR {m['ms_q1']:.2f}-{m['ms_q3']:.2f})" if m.get("ms_median") is not None
              else "n/a")
        rows.append((f"ms/step {label}", ms, src("bench")))
    rows.append(("ratio nGPT/standard", _f(b.get("ratio_ngpt_over_standard"), ".3f"), src("bench")))
    rows.append(("ratio anGPT/nGPT", _f(b.get("ratio_angpt_over_ngpt"), ".3f"), src("bench")))
    for name, label in MODELS:
        m = b.get(name) or {}
        mfu = m.get("mfu")
        value = (f"{100 * mfu:.1f}% of {b.get('peak_tflops'):g} TFLOP/s" if mfu is not None
                 else "n/a on CPU" if b.get("hardware") == "cpu" else "n/a")
        rows.append((f"MFU {label}", value, src("bench")))
    for name, label in MODELS:
        m = b.get(name) or {}
        rows.append((f"bench warm-up {label} (--warmup {b.get('warmup', '?')}, torch.compile included when on)",
                     _f(m.get("warmup_s"), ".1f", " s"), src("bench")))
    e = results["bench_eval"] or {}
    rows.append(("eval tokens/s (1 device)", _f(e.get("tokens_per_s"), ",.0f"), src("bench_eval")))
    rows.append((f"eval projected full val split on {e.get('gpus', 8)} GPUs",
                 (f"{e['projected_s']:.1f} s (under 600 s: {e['under_600s']})" if e.get("projected_s") is not None
                  else "n/a"), src("bench_eval")))
    rows.append(("eval warm-up (torch.compile included when on)", _f(e.get("warmup_s"), ".1f", " s"),
                 src("bench_eval")))
    t = results["train"] or {}
    if t:
        on_cpu = "cpu" in (t["hardware"] or "")
        rows.append(("train hardware", f"{t['hardware']}, torch {t['torch']}, COMPILE={t['compile']}"
                     + (" (never compiled on the CPU)" if on_cpu else ""), src("train")))
    rows.append(("train steps", "n/a" if t.get("steps") is None else
                 f"{t['steps']}/{t['iterations']}" + (" (stopped at the wallclock cap)" if t.get("stopped_early")
                                                      else ""), src("train")))
    rows.append(("train time, step_avg", "n/a" if t.get("train_time_ms") is None else
                 f"{t['train_time_ms'] / 1000:.1f} s, {_f(t.get('step_avg_ms'), '.2f', ' ms')}", src("train")))
    rows.append((f"train warm-up (WARMUP_STEPS={t.get('warmup_steps', '?')}, torch.compile included when on)",
                 _f(t.get("warmup_s"), ".1f", " s"), src("train")))
    rows.append(("peak memory", t.get("peak_memory") or "n/a", src("train")))
    pre, post = t.get("pre_quant") or {}, t.get("roundtrip_plain") or {}
    rows.append(("val_bpb pre-quant", _f(pre.get("val_bpb"), ".4f"), src("train")))
    rows.append(("val_bpb post-quant (reloaded, non-overlapping)", _f(post.get("val_bpb"), ".4f"), src("train")))
    rows.append(("quant gap bpb", _f(t.get("quant_gap_bpb"), ".4f"), src("train")))
    rows.append(("final val_bpb (sliding window, the score)", _f((t.get("final_exact") or {}).get("val_bpb"), ".8f"),
                 src("train")))
    sub = t.get("submission_bytes") or {}
    rows.append(("artifact bytes", "n/a" if sub.get("total") is None else
                 f"{sub['total']:,} (code {sub['code']:,} + model {sub['model']:,}; limit {sub['limit']:,})",
                 src("train")))
    final = t.get("final_roundtrip") or {}
    rows.append(("eval time", "n/a" if t.get("eval_phase_time_ms") is None else
                 f"{t['eval_phase_time_ms'] / 1000:.1f} s eval phase ({_f(final.get('eval_time_ms'), '.0f', ' ms')} "
                 "sliding window)", src("train")))
    c = results["check"]
    rows.append(("check.py", "n/a" if c is None else "PASS" if c["passed"] else
                 f"FAIL (exit {c['exit']}): " + "; ".join(c["violations"]), src("check")))
    return rows


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(summary: dict, steps: list[Step], rows) -> str:
    mode = "dry run (CPU; CUDA steps reported, not run)" if summary["dry_run"] else "full run"
    verdict = "PASS" if summary["ok"] else f"FAIL: {summary['reason']}"
    lines = [f"# gpu_check: {mode}", "",
             f"{summary['started']} | {summary['seconds']:.0f} s of --budget-s {summary['budget_s']:g} | "
             f"--train-seconds {summary['train_seconds']:g} | data {summary['data']} | result: {verdict}", "",
             "## Steps", "", "| # | step | status | seconds | command (stdout/stderr logs) |",
             "| --- | --- | --- | --- | --- |"]
    for i, s in enumerate(steps, 1):
        seconds = "-" if s.seconds is None else f"{s.seconds:.1f}"
        cmd = (f"`{s.command_line()}` ({s.stdout.name}, {s.stderr.name})" if s.cmd else
               f"would run: `{s.would_run}`")
        lines.append(f"| {i} | {s.name} | {_cell(s.detail())} | {seconds} | {_cell(cmd)} |")
    would = [s for s in steps if s.would_run]
    if would:
        lines += ["", "## Would run (needs CUDA; a full run executes these)", ""]
        lines += [f"- {s.name}: would run: `{s.would_run}`" + (f" ({s.note})" if s.cmd is None and s.note else "")
                  for s in would]
    lines += ["", "## Results" + (" (from the tiny CPU stand-ins: not the GPU numbers)" if summary["dry_run"] else ""),
              "", "| metric | value | from |", "| --- | --- | --- |"]
    lines += [f"| {_cell(m)} | {_cell(v)} | {_cell(f)} |" for m, v, f in rows]
    lines += ["", f"Train log: {summary['train_log'] or 'none (the train step wrote no log)'}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda message: (print(f"{PROG}: error: {message}", file=sys.stderr), sys.exit(2))
    arg = p.add_argument
    arg("--data", type=Path, required=True,
        help="folder of challenge-format shards (fineweb_train_*.bin, fineweb_val_*.bin)")
    arg("--tokenizer", type=Path, required=True, help="SentencePiece model of --data (VOCAB_SIZE is read from it)")
    arg("--out", type=Path, required=True, help="output folder; created, or must be empty")
    arg("--train-seconds", type=float, default=300.0, help="MAX_WALLCLOCK_SECONDS of the train run, and check.py's "
        "--max-train-s (default %(default)g)")
    arg("--dry-run", action="store_true", help="CPU only: tiny stand-ins of the CPU-runnable steps, 'would run' "
        "lines for the CUDA-only ones")
    arg("--budget-s", type=float, default=585.0, help="wall clock for the whole command: the steps are timed out to "
        "fit it (default %(default)g: one 10-minute device call)")
    arg("--train-overhead-s", type=float, default=120.0, help="time reserved for the train step beyond "
        "--train-seconds: start-up, compile and warm-up, final evaluations, export (default %(default)g)")
    arg("--check-reserve-s", type=float, default=15.0, help="time reserved for check.py (default %(default)g)")
    arg("--step-cap-s", type=float, default=180.0, help="most time for each of gpu_tests, bench, bench_eval "
        "(and the dry run's train) (default %(default)g)")
    args = p.parse_args(argv)
    for name in ("train_seconds", "budget_s", "train_overhead_s", "check_reserve_s", "step_cap_s"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            p.error(f"--{name.replace('_', '-')} {value:g} must be a positive number")
    args.data, args.tokenizer, args.out = args.data.resolve(), args.tokenizer.resolve(), args.out.resolve()
    if not args.data.is_dir():
        p.error(f"--data {args.data} is not a folder")
    missing = [g for g in ("fineweb_train_*.bin", "fineweb_val_*.bin") if not any(args.data.glob(g))]
    if missing:
        p.error(f"--data {args.data} has no {' and no '.join(missing)}")
    if not args.tokenizer.is_file():
        p.error(f"--tokenizer {args.tokenizer} is not a file")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        p.error(f"--out {args.out} exists and is not an empty folder; refusing to overwrite it")
    needed = args.train_seconds + args.train_overhead_s + args.check_reserve_s  # the full run's (checked in a dry run)
    if needed + MIN_STEP_S > args.budget_s:
        p.error(f"--budget-s {args.budget_s:g} cannot hold the reserved {needed:g} s (--train-seconds + "
                f"--train-overhead-s + --check-reserve-s); lower --train-seconds")
    try:
        import sentencepiece as spm
        args.vocab_size = spm.SentencePieceProcessor(model_file=str(args.tokenizer)).vocab_size()
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad argument
        first = (str(e).strip().splitlines() or [""])[0]
        p.error(f"--tokenizer {args.tokenizer} cannot be loaded ({type(e).__name__}: {first})")
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            p.error("CUDA is not available; on a CPU machine use --dry-run")
    return args


def main(argv=None, started_at: float | None = None) -> int:
    """Exit status: 0 every step passed, 1 a step failed, 2 bad arguments, 130 interrupted. --budget-s counts from
    started_at (time.monotonic(); default: now)."""
    started_at = time.monotonic() if started_at is None else started_at
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train").mkdir()
    shutil.copyfile(ROOT / "train_gpt.py", args.out / "train" / "train_gpt.py")
    steps = plan(args)
    reserved = {s.name: s.reserve_s for s in steps if s.reserve_s}
    print(f"gpu_check: {'dry run on the CPU' if args.dry_run else 'full run'} in {args.out}; --budget-s "
          f"{args.budget_s:g}, of which reserved: " + ", ".join(f"{k} {v:g} s" for k, v in reserved.items())
          + f"; the steps before them share the rest, each at most {args.step_cap_s:g} s", flush=True)
    interrupted = False
    try:
        run_steps(steps, args.budget_s - (time.monotonic() - started_at), echo=lambda m: print(m, flush=True))
    except KeyboardInterrupt:
        interrupted = True
        for s in steps:
            if s.status == "pending":
                s.status, s.note = "not run", "interrupted"
    results = collect(steps, args)
    rows = table(results, steps, args.dry_run)
    reason = "interrupted" if interrupted else failure_reason(steps)
    train_log = args.out / "train" / "logs" / f"{RUN_ID}.txt"
    summary = {
        "dry_run": args.dry_run, "ok": reason is None, "reason": reason, "started": started,
        "seconds": time.monotonic() - started_at, "budget_s": args.budget_s, "train_seconds": args.train_seconds,
        "data": str(args.data), "tokenizer": str(args.tokenizer), "vocab_size": args.vocab_size,
        "out": str(args.out), "train_log": str(train_log) if train_log.exists() else None,
        "steps": [{"name": s.name, "title": s.title, "status": s.status, "outcome": s.outcome(), "rc": s.rc,
                   "seconds": s.seconds, "timeout_s": s.timeout_s, "command": s.command_line() or None,
                   "would_run": s.would_run, "note": s.note or None,
                   "stdout": s.stdout.name if s.stdout else None, "stderr": s.stderr.name if s.stderr else None,
                   "marks_s": s.marks} for s in steps],
        "results": results,
        "table": [{"metric": m, "value": v, "from": f} for m, v, f in rows],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    text = render(summary, steps, rows)
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    print("\n" + text, flush=True)
    if reason:
        print(f"{PROG}: error: {reason}; see {args.out / 'summary.md'}", file=sys.stderr)
        return 130 if interrupted else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(started_at=T_START))
