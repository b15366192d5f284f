#!/usr/bin/env python3
"""Check the harness on one CUDA GPU in two calls sized to what they compile, inside the device's 15 minutes.

  python tools/gpu_check.py --prepare --data SHARDS --tokenizer MODEL  # once, here: gpu_check_data/ and .whl/
  python tools/gpu_check.py --call 1 --wheels .whl --out DIR           # on the GPU: <= 220 s (device timeout_s 230)
  python tools/gpu_check.py --call 2 --wheels .whl --out DIR           # on the GPU: <= 285 s (device timeout_s 295)
  python tools/gpu_check.py --call N --data D --tokenizer T --out DIR --dry-run  # the same steps on a CPU, tiny

Call 1 finds crashes, not speeds. A 2-layer model (NUM_LAYERS=2, the other dims the default) through the whole
pipeline on CUDA: train_gpt.py under torchrun, one process, in --out/call1/train/ (WARMUP_STEPS=2, 15 s of training
with the calibration, export, reload, TTT with TTT_PHASES=1 and EVAL_BUDGET_SECONDS=0.01: a deadline past before TTT
begins, so it strikes whatever the GPU's speed and every document is scored forward only); tools/check.py on its log,
script and artifact; then the GPU tests (pytest -q -m gpu on tests/test_gpu.py, at 2 layers) in the time left. Every
CUDA-only path runs in it: FlashAttention 3 when installed (its start-up check), pinned host copies, the TF32
switches, GPTQ's cholesky_ex on CUDA; TTT's adapted path runs in the warm-up and the GPU tests (and in call 2 on
validation documents). tools/bench.py's three full-depth models are left out of both calls (three 12-layer
compiles); tests/test_bench.py's GPU test, which runs them, is left out with it.
Call 2 measures: the default shape with WARMUP_STEPS=2, MAX_WALLCLOCK_SECONDS=45, EVAL_BUDGET_SECONDS=20, then
tools/check.py. Both train with WARMDOWN_ITERS and MUON_MOMENTUM_WARMUP_STEPS scaled to the short run; the
environment wins over every setting but MAX_WALLCLOCK_SECONDS.

Each call writes --out/call<N>/: every step's NN_<step>.stdout.txt / .stderr.txt, train/ and summary.md /
summary.json, printed at the end: each step's time against its budget, the step time, each compile's time
(warmup_time, ttt_warmup_time) against the budget below, calibration and export times, peak memory per phase, the
quantization gap, the TTT rates and time per token with its projection to 8 such GPUs (8x H100), the deadline,
graphs compiled inside the clocks, check.py's verdict. --results DIR copies summary.md, summary.json and call<N>.tgz
(the folder less weights) into DIR: the device returns at most 8 files. --wheels DIR pip-installs DIR's wheels into
--out/call<N>/site/ (no index) on every step's PYTHONPATH: the device image lacks zstandard. --dry-run: the CPU,
tools/tiny.py's TINY_TRAIN over the train step's environment, pytest --collect-only, pip install --dry-run for
Python 3.12 on x86-64; its summary adds the device command and what the device call would carry from here.

What the device call carries, prepared once in the repository root (--prepare runs these three commands; both
folders are git-ignored and named in the call's carry; the data: any sp1024 shards, the downloaded FineWeb or a
stand-in):

  python tools/data.py head --data ./data/datasets/fineweb10B_sp1024 --val-tokens 131072 --train-tokens 10000000 --out gpu_check_data
  cp ./data/tokenizers/fineweb_1024_bpe.model gpu_check_data/tokenizer.model
  python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl zstandard==0.25.0

20.3 MB of shards and tokenizer and a 5.5 MB wheel: with the repository about 28 MB of the 64 MiB that travel
(the dry run's summary counts it). The training stream cycles through the 10M tokens.

How the budgets are sized. Compile times measured on a CPU (dynamo + AOT front end, COMPILE_BACKEND=aot_eager, dims
512, MLP 4.25, TRAIN_SEQ_LEN=1024, one process per measurement): the training graph (forward and backward) 2.4 s at
2 layers, 8.9 s at 12; the validation forward 1.1 s / 3.5 s; TTT's warm-up graphs (StagedForward: 7, 10 with
TTT_PHASES=1) 15.6 s at 2 layers, 20.6 s with phases, 16.5 s at 12: the warm-up's 19.8 s / 25.7 s / 39.3 s less a
second warm-up with every graph cached (the CPU computing its passes, a second's work for a GPU). On the GPU's host
each is taken 3 times as long: Inductor's lowering and code generation (single-threaded Python, about the front
end's cost again) and Triton's kernel builds (parallel on 16 cores) on a cold cache. The records' whole-model
dynamic TTT compiles took 80-188 s on H100 hosts (#1855: 137.6 s) where this project's whole-model dynamic TTT graph
took 75.5 s of front end at 12 layers: a factor of 1.1-2.5; 3 covers it. The rest is assumed; the summary sets the
real numbers (warmup_time, ttt_warmup_time, export_time, the train step's time outside the log's timers) against
these, for the next calls to be sized from. In seconds:

call 1: NUM_LAYERS=2 WARMUP_STEPS=2 TTT_PHASES=1 EVAL_BUDGET_SECONDS=0.01 MAX_WALLCLOCK_SECONDS=15
  gpu_check    3.0  this tool's start: import torch, the arguments checked
  wheels       5.0  pip installs the carried wheels
  train       20.0  start: torchrun, two Pythons, import torch, CUDA, shards, model (assumed)
               7.2  the training graph's compile: 3 x 2.4
               1.0  2 warm-up steps
              15.0  MAX_WALLCLOCK_SECONDS: training and GPTQ's calibration
               4.3  the last validation: compile 3 x 1.1, its pass 1
              10.0  export: GPTQ, the step search, coding (6-7 s on a CPU at 12 layers)
              61.8  TTT warm-up, 10 graphs: 3 x 20.6
               5.0  evaluation: EVAL_BUDGET_SECONDS 0.01, the artifact read, the plain pass, all forward only 5
               3.0  exit
  check       15.0  tools/check.py
  gpu_tests   66.1  pytest's start 8, compiled vs eager 3 x 1.1 + 2, TTT's 7 graphs 3 x 15.6 + 3, GPTQ 3
  total      216.4  --budget-s 220, device timeout_s 230
call 2: WARMUP_STEPS=2 EVAL_BUDGET_SECONDS=20 MAX_WALLCLOCK_SECONDS=45
  gpu_check    3.0  this tool's start: import torch, the arguments checked
  wheels       5.0  pip installs the carried wheels
  train       20.0  start: torchrun, two Pythons, import torch, CUDA, shards, model (assumed)
              26.7  the training graph's compile: 3 x 8.9
               2.0  2 warm-up steps
              45.0  MAX_WALLCLOCK_SECONDS: training and GPTQ's calibration
              11.5  the last validation: compile 3 x 3.5, its pass 1
              10.0  export: GPTQ, the step search, coding (6-7 s on a CPU at 12 layers)
              52.5  TTT warm-up, 7 graphs: 3 x 16.5, its passes 3
              28.0  evaluation: EVAL_BUDGET_SECONDS 20, the artifact read, the plain pass, one adapted batch past it 8
               3.0  exit
  check       15.0  tools/check.py
  spare       60.0  a minute to spare
  total      281.7  --budget-s 285, device timeout_s 295
device: machine start 120 + call 1 230 + call 2 295 = 645 of 900 s: 255 s left for a rerun (at least 240)

Each step runs in its own process group for what is left of --budget-s less the budgets of the steps after it, and
at least its own budget while the call has that much left (a step left under 5 s is not run); past that it is a
timeout (SIGTERM to the group, SIGKILL 5 s later). Exit 0: every step passed; 1: a step failed (one-line reason);
2: bad arguments.
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
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

from runlog import parse_log  # tools/ is on the path: the script's folder (pytest.ini puts it there too)
from tiny import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
PROG = "gpu_check.py"

# What the device call carries: two git-ignored folders in the repository root, named in its carry.
DATA_DIR, WHEEL_DIR, TOKENIZER_NAME = "gpu_check_data", ".whl", "tokenizer.model"
CARRY = (WHEEL_DIR, DATA_DIR)
VAL_TOKENS, TRAIN_TOKENS = 131_072, 10_000_000  # the head --prepare cuts from --data
WHEELS = ["zstandard==0.25.0"]  # what the device image lacks
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                    "manylinux1_x86_64"]
TRAVEL_LIMIT_MIB = 64  # the working tree that travels to the device: tracked and untracked files, carried folders

# The device's time: 15 minutes a session, one machine start, and a rerun kept in hand.
DEVICE_S, MACHINE_START_S, RERUN_S = 900, 120, 240
DEVICE_SLACK_S = 10  # a call's device timeout beyond its --budget-s: Python's start, the copies into --results

MIN_STEP_S, KILL_GRACE_S = 5.0, 5.0

# ---------------------------------------------------------------- the budgets (the docstring's arithmetic)

INDUCTOR_FACTOR = 3.0  # Inductor's compile on the GPU's host over the front end measured on a CPU (the docstring)
FRONT_END_S = {("train", 2): 2.4, ("train", 12): 8.9, ("validation", 2): 1.1, ("validation", 12): 3.5,
               ("ttt", 2): 15.6, ("ttt", 12): 16.5, ("ttt_phases", 2): 20.6}
START_S = 20.0  # torchrun and its worker start, import torch, CUDA and the process group, shards read, model built
EXPORT_S = 10.0  # GPTQ's solve, the step search and the coding: 6.2-6.8 s on a CPU at 12 layers (ablations)
CHECK_S = 15.0
GPU_CHECK_S, WHEELS_S, EXIT_S = 3.0, 5.0, 3.0


class Part(NamedTuple):
    """One item of a call's time budget: the step that spends it, a key the summary compares with the log's number,
    its seconds, and what it is."""
    step: str
    key: str
    seconds: float
    what: str


class Call(NamedTuple):
    """A call: the train step's settings (MAX_WALLCLOCK_SECONDS is train_s) and its budget, part by part."""
    train_s: float
    env: dict
    parts: list

    def total_s(self) -> float:
        return sum(part.seconds for part in self.parts)

    def budget_s(self) -> int:
        """--budget-s: the parts' total, rounded up to 5 s."""
        return 5 * math.ceil(self.total_s() / 5 - 1e-9)

    def timeout_s(self) -> int:
        """The device tool's timeout_s for the call."""
        return self.budget_s() + DEVICE_SLACK_S

    def step_s(self, step: str) -> float:
        return sum(part.seconds for part in self.parts if part.step == step)

    def keyed_s(self, *keys: str) -> float:
        return sum(part.seconds for part in self.parts if part.key in keys)


def compile_s(graphs: str, layers: int) -> float:
    """A compile's seconds on the GPU's host: INDUCTOR_FACTOR times the front end measured on a CPU."""
    return INDUCTOR_FACTOR * FRONT_END_S[graphs, layers]


def times(graphs: str, layers: int) -> str:
    """How compile_s got its number: '3 x 2.4'."""
    return f"{INDUCTOR_FACTOR:g} x {FRONT_END_S[graphs, layers]:g}"


def pipeline_parts(layers: int, train_s: float, ttt_graphs: str, ttt_what: str, ttt_passes_s: float,
                eval_budget_s: float, past_deadline_s: float, past_what: str) -> list[Part]:
    """The budget up to and including the check: this tool's start, the wheels, then the train step: start, the
    training graph's compile, 2 warm-up steps (about a second each at the default shape on one GPU: 8 micro-batches
    of 48 x 2048 tokens; less at 2 layers), training, the last validation, export, TTT's warm-up (its compile, and
    its passes on random tokens where they count), the evaluation (its deadline and what runs past it), exit."""
    return [Part("gpu_check", "gpu_check", GPU_CHECK_S, "this tool's start: import torch, the arguments checked"),
            Part("wheels", "wheels", WHEELS_S, "pip installs the carried wheels"),
            Part("train", "start", START_S, "start: torchrun, two Pythons, import torch, CUDA, shards, model (assumed)"),
            Part("train", "train_compile", compile_s("train", layers),
                 f"the training graph's compile: {times('train', layers)}"),
            Part("train", "warmup_steps", 2.0 if layers == 12 else 1.0, "2 warm-up steps"),
            Part("train", "training", train_s, "MAX_WALLCLOCK_SECONDS: training and GPTQ's calibration"),
            Part("train", "validation", compile_s("validation", layers) + 1,
                 f"the last validation: compile {times('validation', layers)}, its pass 1"),
            Part("train", "export", EXPORT_S, "export: GPTQ, the step search, coding (6-7 s on a CPU at 12 layers)"),
            Part("train", "ttt_warmup", compile_s(ttt_graphs, layers) + ttt_passes_s,
                 f"TTT warm-up, {ttt_what}: {times(ttt_graphs, layers)}"
                 + (f", its passes {ttt_passes_s:g}" if ttt_passes_s else "")),
            Part("train", "evaluation", eval_budget_s + past_deadline_s,
                 f"evaluation: EVAL_BUDGET_SECONDS {eval_budget_s:g}, the artifact read, the plain pass, {past_what} "
                 f"{past_deadline_s:g}"),
            Part("train", "exit", EXIT_S, "exit"),
            Part("check", "check", CHECK_S, "tools/check.py")]


def first_call() -> Call:
    """Crashes: 2 layers, the whole pipeline with phased TTT and a deadline that strikes at once, the GPU tests."""
    env = {"NUM_LAYERS": "2", "WARMUP_STEPS": "2", "TTT_PHASES": "1", "EVAL_BUDGET_SECONDS": "0.01"}
    parts = pipeline_parts(layers=2, train_s=15.0, ttt_graphs="ttt_phases", ttt_what="10 graphs", ttt_passes_s=0.0,
                        eval_budget_s=float(env["EVAL_BUDGET_SECONDS"]), past_deadline_s=5.0,
                        past_what="all forward only")
    tests = 8 + compile_s("validation", 2) + 2 + compile_s("ttt", 2) + 3 + 3
    parts.append(Part("gpu_tests", "gpu_tests", tests, f"pytest's start 8, compiled vs eager {times('validation', 2)}"
                      f" + 2, TTT's 7 graphs {times('ttt', 2)} + 3, GPTQ 3"))
    return Call(15.0, env, parts)


def second_call() -> Call:
    """Measures: the default shape, a short training, a bounded evaluation, a minute to spare."""
    env = {"WARMUP_STEPS": "2", "EVAL_BUDGET_SECONDS": "20"}
    parts = pipeline_parts(layers=12, train_s=45.0, ttt_graphs="ttt", ttt_what="7 graphs", ttt_passes_s=3.0,
                        eval_budget_s=float(env["EVAL_BUDGET_SECONDS"]), past_deadline_s=8.0,
                        past_what="one adapted batch past it")
    parts.append(Part("spare", "spare", 60.0, "a minute to spare"))
    return Call(45.0, env, parts)


CALLS = {1: first_call(), 2: second_call()}
# per second of training: the defaults (4000 and 1500 of about 5,000 steps in 600 s on 8 GPUs) scaled to one GPU at
# the default shape, about a step a second
SHORT_SCHEDULE = {"WARMDOWN_ITERS": 250 / 300, "MUON_MOMENTUM_WARMUP_STEPS": 90 / 300}


def budget_text() -> str:
    """The docstring's arithmetic, from the numbers above (tests/test_gpu_check.py holds the docstring to it)."""
    lines = []
    for n, call in CALLS.items():
        settings = {**call.env, "MAX_WALLCLOCK_SECONDS": f"{call.train_s:g}"}
        lines.append(f"call {n}: " + " ".join(f"{k}={v}" for k, v in settings.items()))
        step = None
        for part in call.parts:
            label = part.step if part.step != step else ""
            step = part.step
            lines.append(f"  {label:<10}{part.seconds:6.1f}  {part.what}")
        lines.append(f"  {'total':<10}{call.total_s():6.1f}  --budget-s {call.budget_s()}, device timeout_s "
                     f"{call.timeout_s()}")
    used = MACHINE_START_S + sum(call.timeout_s() for call in CALLS.values())
    lines.append(f"device: machine start {MACHINE_START_S} + call 1 {CALLS[1].timeout_s()} + call 2 "
                 f"{CALLS[2].timeout_s()} = {used} of {DEVICE_S} s: {DEVICE_S - used} s left for a rerun (at least "
                 f"{RERUN_S})")
    return "\n".join(lines)


def device_command(n: int) -> str:
    """The device tool's call for call n, as README.md gives it (the working tree's root is the command's folder)."""
    carry = ", ".join(f"'{path}'" for path in CARRY)
    return (f"run(timeout_s={CALLS[n].timeout_s()}, carry=[{carry}], command=\"python3 tools/gpu_check.py --call {n} "
            f"--wheels {WHEEL_DIR} --out $(mktemp -d) --results $OUT\")")


def platform_flags() -> list[str]:
    """pip's --platform for each of the device's platforms."""
    return [flag for platform in DEVICE_PLATFORMS for flag in ("--platform", platform)]


def prepare_commands(data: Path | str, tokenizer: Path | str, python: str = sys.executable) -> list[list[str]]:
    """--prepare's commands, run in the repository root: the head of the shards, the tokenizer beside it, the wheels
    for the device's Python."""
    return [[python, "tools/data.py", "head", "--data", str(data), "--val-tokens", str(VAL_TOKENS), "--train-tokens",
             str(TRAIN_TOKENS), "--out", DATA_DIR],
            ["cp", str(tokenizer), f"{DATA_DIR}/{TOKENIZER_NAME}"],
            [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
             "--implementation", "cp", *platform_flags(), "-d", WHEEL_DIR, *WHEELS]]


# ---------------------------------------------------------------- steps


def read(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


class Step:
    """One command of a call, in its own process group, stdout and stderr into files. env: set over os.environ;
    budget_s: its share of the call's budget, kept for it while earlier steps run; would_run: a dry run's record of
    the device's command."""

    def __init__(self, name: str, cmd: list, cwd: Path, env: dict | None = None, budget_s: float = 0.0):
        self.name, self.cmd, self.cwd, self.env, self.budget_s = name, cmd, cwd, env or {}, budget_s
        self.would_run, self.stdout, self.stderr = None, None, None
        self.status = "pending"  # then: ok, failed, timeout or not run
        self.rc, self.seconds, self.timeout_s, self.note = None, None, None, ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timeout", "not run")

    def line(self) -> str:
        """The command for a POSIX shell."""
        words = [f"{k}={shlex.quote(str(v))}" for k, v in self.env.items()] + [shlex.quote(str(c)) for c in self.cmd]
        return f"cd {shlex.quote(str(self.cwd))} && " + " ".join(words)

    def outcome(self) -> str:
        """'ok', 'exit 1: <its error line>', 'timeout after 90 s: <...>', 'not run: <why>'."""
        if self.status == "failed":
            text = f"exit {self.rc}"
        elif self.status == "timeout":
            text = f"timeout after {self.timeout_s or 0:.0f} s"
        else:
            text = self.status
        return f"{text}: {self.note}" if self.note else text


def train_env(args, call: Call) -> dict:
    """The train step's environment: the short schedule and the call's settings (the environment wins), the wall
    clock, the data."""
    settings = {k: str(max(1, round(per_s * call.train_s))) for k, per_s in SHORT_SCHEDULE.items()}
    settings.update(call.env)
    env = {k: os.environ.get(k, v) for k, v in settings.items()}
    env.update(MAX_WALLCLOCK_SECONDS=f"{call.train_s:g}", DATA_PATH=str(args.data), TOKENIZER_PATH=str(args.tokenizer),
               VOCAB_SIZE=str(args.vocab_size), RUN_ID=args.run_id)
    return env


def python_path(args) -> dict:
    """PYTHONPATH with --wheels' install folder first (empty without --wheels)."""
    if args.wheels is None:
        return {}
    return {"PYTHONPATH": os.pathsep.join([str(args.site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def dry_args(step: str) -> list[str]:
    """What a dry run adds to a step's command: pytest only collects; pip checks the wheels for the device's Python
    and installs nothing."""
    if step == "gpu_tests":
        return ["--collect-only"]
    if step == "wheels":
        return ["--dry-run", "--only-binary=:all:", "--python-version", DEVICE_PYTHON, "--implementation", "cp",
                *platform_flags()]
    return []


def plan(args) -> list[Step]:
    """The call's steps. A dry run's: the same on the CPU, the train step's at tools/tiny.py's TINY_TRAIN, dry_args
    added."""
    py, call, work = sys.executable, CALLS[args.call], args.dir / "train"
    path = python_path(args)
    steps = []
    if args.wheels is not None:
        wheels = [str(p) for p in sorted(args.wheels.glob("*.whl"))]
        steps.append(Step("wheels", [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                     "--no-cache-dir", "--upgrade", "--target", str(args.site), *wheels], ROOT))
    steps.append(Step("train", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                "train_gpt.py"], work, {**train_env(args, call), **path}))
    steps.append(Step("check", [py, "tools/check.py", str(args.log), "--script", str(work / "train_gpt.py"), "--ptz",
                                str(work / "final_model.ptz"), "--max-train-s", f"{call.train_s:g}"], ROOT, path))
    if args.call == 1:  # one process (no pytest.ini addopts: GPU timings want the GPU alone)
        steps.append(Step("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-o", "addopts=", "tests/test_gpu.py"],
                          ROOT, path))
    cpu = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for i, step in enumerate(steps, 1):
        step.budget_s = call.step_s(step.name)
        if args.dry_run:
            step.would_run = step.line()
            step.cmd = step.cmd + dry_args(step.name)
            step.env = {**step.env, **(TINY_TRAIN if step.name == "train" else {}), **cpu}
        step.stdout = args.dir / f"{i:02d}_{step.name}.stdout.txt"
        step.stderr = args.dir / f"{i:02d}_{step.name}.stderr.txt"
    return steps


ERROR_LINE = re.compile(r"(^|: )error: |^FAIL |^FAILED |^ERROR ")


def error_note(step: Step) -> str:
    """A failed step's reason: the first error line of its stderr, else of its stdout, else the last line of either."""
    texts = [read(step.stderr).strip(), read(step.stdout).strip()]
    for text in texts:
        for line in text.splitlines():
            if ERROR_LINE.search(line):
                return line
    for text in texts:
        if text:
            return text.splitlines()[-1]
    return ""


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the step's process group; SIGKILL it if the step has not ended KILL_GRACE_S later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, limit_s: float) -> None:
    """Run one step for at most limit_s; its status, exit code, seconds and (failed) note."""
    step.timeout_s = limit_s
    step.cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(step.stdout, "w") as out, open(step.stderr, "w") as err:
        proc = subprocess.Popen([str(c) for c in step.cmd], cwd=step.cwd, env={**os.environ, **step.env}, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            step.status = "ok" if proc.wait(timeout=limit_s) == 0 else "failed"
        except subprocess.TimeoutExpired:
            step.status = "timeout"
        finally:  # a timeout, or Ctrl-C: take the step's processes down
            if proc.returncode is None:
                stop_group(proc)
    step.seconds, step.rc = time.monotonic() - t0, proc.returncode
    step.note = error_note(step) if step.failed else ""


def say(message: str) -> None:
    print(message, flush=True)


def step_limit(step: Step, left_s: float, later_s: float) -> float:
    """A step's time: what is left of the call less the budgets of the steps after it, and at least its own budget
    while the call has that much left (an early step that started late takes its time from the later ones)."""
    return min(left_s, max(step.budget_s, left_s - later_s))


def run_steps(steps: list[Step], budget_s: float, echo=say) -> str | None:
    """Each step for its step_limit (under MIN_STEP_S: not run). Returns None when every step passed, else one line
    naming the failures."""
    deadline = time.monotonic() + budget_s
    for i, step in enumerate(steps):
        echo(f"[{i + 1}/{len(steps)}] {step.name}: $ {step.line()}")
        left = step_limit(step, deadline - time.monotonic(), sum(later.budget_s for later in steps[i + 1:]))
        if left < MIN_STEP_S:
            step.status, step.note = "not run", f"only {max(left, 0):.0f} s of --budget-s left for it"
            echo(f"  {step.outcome()}")
            continue
        run_step(step, left)
        echo(f"  {step.outcome()} ({step.seconds:.1f} s, limit {step.timeout_s:.0f} s)")
    bad = [f"{s.name} ({s.outcome()[:300]})" for s in steps if s.failed]
    if not bad:
        return None
    return f"{len(bad)} of {len(steps)} steps failed: " + ", ".join(bad)


# ---------------------------------------------------------------- results


def pytest_result(step: Step) -> dict:
    """pytest -q's final line ('4 passed in 80.12s', '4/210 tests collected ...'), the node ids it listed (a dry
    run's collection) and its FAILED / ERROR lines."""
    lines = [line.strip().strip("=").strip() for line in read(step.stdout).splitlines()]
    lines = [line for line in lines if line]
    return {"summary": lines[-1] if lines else None,
            "tests": [line for line in lines if "::" in line and " " not in line],
            "failures": [line for line in lines if line.startswith(("FAILED ", "ERROR "))]}


def collect(steps: list[Step], log: Path) -> dict:
    """The GPU tests' result, the train log parsed (less its source), check.py's exit and FAIL lines."""
    by = {step.name: step for step in steps}
    train = None
    if log.exists():
        train = {k: v for k, v in parse_log(log).items() if k != "source"}
    check = by.get("check")
    check_result = None
    if check is not None and check.status in ("ok", "failed"):
        fails = [line for line in read(check.stderr).splitlines() if line.startswith("FAIL ")]
        check_result = {"passed": check.rc == 0, "exit": check.rc, "violations": fails}
    return {"gpu_tests": pytest_result(by["gpu_tests"]) if "gpu_tests" in by else None, "train": train,
            "check": check_result, "seconds": {step.name: step.seconds for step in steps}}


def fmt(value, spec: str = ",.0f", unit: str = "") -> str:
    """A number for the summary; 'n/a' where the run produced none."""
    return "n/a" if value is None else format(value, spec) + unit


def seconds_of(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def against(measured_s: float | None, budget_s: float) -> str:
    """'41.2 s (budgeted 27.7 s)'."""
    return f"{fmt(measured_s, '.1f', ' s')} (budgeted {budget_s:.1f} s)"


def outside_timers(t: dict, train_step_s: float | None) -> float | None:
    """The train step's seconds that no timer of the log covers: start, the last validation, exit."""
    timed = [t.get(k) for k in ("train_warmup_time_ms", "train_time_ms", "export_time_ms", "warmup_time_ms",
                                "eval_phase_time_ms")]
    if train_step_s is None or None in timed:
        return None
    return train_step_s - sum(timed) / 1000


def ttt_rows(t: dict, call: Call) -> list[tuple[str, str]]:
    """TTT's warm-up, rates, time per token and projection, and the deadline."""
    ttt, rates, late = t.get("ttt") or {}, t.get("ttt_rates"), t.get("ttt_deadline")
    per_token = "n/a"
    if ttt.get("time_ms") is not None and ttt.get("tokens"):
        per_token = (f"{1000 * ttt['time_ms'] / ttt['tokens']:.1f} us ({fmt(ttt['time_ms'], ',.0f', ' ms')} for "
                     f"{ttt['tokens']:,} tokens, {ttt['docs']} docs, {fmt(t.get('ttt_docs_unadapted'))} unadapted by "
                     "the deadline)")
    deadline = "n/a" if not ttt else "did not strike"
    if late:
        deadline = (f"struck at {fmt(late['at_s'], '.1f', ' s')}: {late['docs_unadapted']} docs forward only "
                    f"({fmt(late['forward_only_tokens'])} tokens), longest adapted segment "
                    f"{fmt(late['longest_adapted_segment_s'], '.1f', ' s')}")
    tilt = t.get("ttt_tilt")
    return [("TTT warm-up: compiles on random tokens (ttt_warmup_time)",
             against(seconds_of(t.get("warmup_time_ms")), call.keyed_s("ttt_warmup"))),
            ("TTT rates per rank (ttt_rates)", "n/a" if not rates else
             f"chunk {fmt(rates['chunk'])}: adapted {fmt(rates['adapted'])} scored tokens/s, forward only "
             f"{fmt(rates['forward_only'])} window tokens/s"),
            ("TTT gain (gain_bpb)", "n/a" if not ttt else f"{ttt['gain_bpb']:+.4f} vs {ttt['vs']}"),
            ("TTT time per token", per_token),
            ("TTT full split on 8 devices like this (8x H100 projection)", fmt(ttt.get("full_split_8x_s"), ".0f", " s")),
            ("TTT deadline (ttt_deadline)", deadline),
            ("TTT n-gram tilt: hints, their time (ttt_tilt)", "n/a" if not tilt else
             f"order {tilt['order']}: {fmt(tilt['hints'])} of {fmt(tilt['targets'])} targets hinted in "
             f"{fmt(tilt['time_ms'], ',.0f', ' ms')}")]


def table(res: dict, call: Call) -> list[tuple[str, str]]:
    """(metric, value) rows; 'n/a' where the run produced no number. Call 1 adds the GPU tests'."""
    t = res["train"] or {}
    sub, sliding = t.get("submission_bytes") or {}, t.get("sliding_score")
    plain = ("(sliding window)", sliding) if sliding else ("(no sliding window: final_roundtrip_plain)",
                                                           t.get("roundtrip_plain"))
    compiles = "n/a"
    if t.get("train_phase_compiles") is not None or t.get("eval_phase_compiles") is not None:
        compiles = f"training {fmt(t.get('train_phase_compiles'))}, evaluation {fmt(t.get('eval_phase_compiles'))}"
    rows = [("hardware", t.get("hardware") or "n/a"), ("FlashAttention 3", t.get("flash_attn_3") or "n/a"),
            ("final score (TTT: final_ttt_roundtrip val_bpb)", fmt((t.get("ttt_score") or {}).get("val_bpb"), ".8f")),
            (f"plain score {plain[0]}", fmt((plain[1] or {}).get("val_bpb"), ".4f")),
            ("quant gap (quant_gap_bpb)", fmt(t.get("quant_gap_bpb"), "+.4f")),
            ("step_avg", fmt(t.get("step_avg_ms"), ".2f", " ms") + f" ({fmt(t.get('steps'))} steps)"),
            ("training compile + warm-up steps (warmup_time)",
             against(seconds_of(t.get("train_warmup_time_ms")), call.keyed_s("train_compile", "warmup_steps"))),
            ("training time (calibration included)", fmt(t.get("train_time_ms"), ",.0f", " ms")),
            ("calibration time", fmt(t.get("calibration_ms"), ",.0f", " ms")),
            ("export time (export_time)", against(seconds_of(t.get("export_time_ms")), call.keyed_s("export")))]
    rows += ttt_rows(t, call)
    rows += [("artifact bytes", "n/a" if sub.get("total") is None else
              f"{sub['total']:,} (code {sub['code']:,} + model {sub['model']:,}; limit {sub['limit']:,})"),
             ("artifact_load_time", fmt(t.get("artifact_load_time_ms"), ",.0f", " ms")),
             ("evaluation time (eval_phase_time)",
              against(seconds_of(t.get("eval_phase_time_ms")), call.keyed_s("evaluation"))),
             ("graphs compiled inside the clocks", compiles),
             ("train step outside the log's timers (start, last validation, exit)",
              against(outside_timers(t, res["seconds"].get("train")), call.keyed_s("start", "validation", "exit")))]
    peak = t.get("peak_memory") or {}
    for phase in dict.fromkeys(["train", "calibration", "eval", "ttt", *peak]):
        values = [f"{k[:-4]} {v:,.0f} MiB" for k, v in (peak.get(phase) or {}).items() if v is not None]
        rows.append((f"peak memory {phase}", ", ".join(values) or "n/a"))
    fallbacks = t.get("gptq_fallback") or []
    rows.append(("GPTQ fallbacks (gptq_fallback)", fmt(sum(x["count"] or 0 for x in fallbacks) if t else None)))
    c = res["check"]
    if c is None:
        rows.append(("check.py", "n/a"))
    else:
        rows.append(("check.py", "PASS" if c["passed"] else f"FAIL (exit {c['exit']}): " + "; ".join(c["violations"])))
    g = res["gpu_tests"]
    if g is not None:
        listed = g["tests"] + g["failures"]
        rows.append(("GPU tests", (g["summary"] or "n/a") + (f": {', '.join(listed)}" if listed else "")))
    return rows


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def travel_rows() -> list[tuple[str, str]]:
    """What the device call would carry from this checkout: the carried folders ready, and the MiB that travel (the
    files git tracks or would add, and the carried folders) against the device's 64 MiB."""
    data, wheels = ROOT / DATA_DIR, sorted((ROOT / WHEEL_DIR).glob("*.whl"))
    shards = [data / "fineweb_train_000000.bin", data / "fineweb_val_000000.bin", data / TOKENIZER_NAME]
    missing = [str(p.relative_to(ROOT)) for p in shards if not p.is_file()]
    rows = [(f"carried {DATA_DIR}/", f"missing {', '.join(missing)}: run --prepare" if missing else
             f"{folder_bytes(data) / 2**20:.1f} MiB"),
            (f"carried {WHEEL_DIR}/", ", ".join(p.name for p in wheels) or "no wheel: run --prepare")]
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return rows + [("travels to the device", "n/a (not a git checkout)")]
    tree = sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())
    carried = sum(folder_bytes(ROOT / folder) for folder in CARRY if (ROOT / folder).is_dir())
    total = (tree + carried) / 2**20
    return rows + [("travels to the device", f"{total:.1f} MiB of {TRAVEL_LIMIT_MIB} (working tree "
                                              f"{tree / 2**20:.1f}, carried {carried / 2**20:.1f})")]


def cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render(s: dict, steps: list[Step], rows: list[tuple[str, str]]) -> str:
    mode = "dry run (CPU, tiny configuration: not the GPU numbers)" if s["dry_run"] else "full run"
    result = f"FAIL: {s['reason']}" if s["reason"] else "PASS"
    lines = [f"# gpu_check call {s['call']}: {mode}", "",
             f"{s['started']} | {s['seconds']:.0f} s of --budget-s {s['budget_s']:g} | training {s['train_seconds']:g}"
             f" s | data {s['data']} | result: {result}", "",
             "| # | step | status | seconds | budgeted | command (logs) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for i, st in enumerate(steps, 1):
        logs = f"`{st.line()}` ({st.stdout.name}, {st.stderr.name})"
        lines.append(f"| {i} | {st.name} | {cell(st.outcome())} | {fmt(st.seconds, '.1f')} | {st.budget_s:.1f} | "
                     f"{cell(logs)} |")
    if s["dry_run"]:
        lines += ["", "## Would run on the device", ""]
        lines += [f"- {st.name}: would run: `{st.would_run}`" for st in steps]
        lines += ["", f"On the device: `{s['device_command']}`", "", "| carried | |", "| --- | --- |"]
        lines += [f"| {cell(m)} | {cell(v)} |" for m, v in s["travel"]]
    lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {cell(m)} | {cell(v)} |" for m, v in rows]
    return "\n".join(lines + ["", f"Train log: {s['train_log']}", ""])


def without_weights(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """tarfile's filter for call<N>.tgz: no weights (final_model.pt, .ptz), no installed wheels (site/)."""
    path = Path(info.name)
    if path.suffix in (".pt", ".ptz") or path.parts[1:2] == ("site",):
        return None
    return info


def pack(args) -> None:
    """--results: summary.md, summary.json and call<N>.tgz (the call's folder less weights)."""
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.json"):
        shutil.copyfile(args.dir / name, args.results / name)
    with tarfile.open(args.results / f"call{args.call}.tgz", "w:gz") as tar:
        tar.add(args.dir, arcname=f"call{args.call}", filter=without_weights)


# ---------------------------------------------------------------- arguments


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line on stderr and exit 2, argparse's own errors too."""
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--call", type=int, choices=sorted(CALLS), help="which of the two calls to run")
    p.add_argument("--prepare", action="store_true", help=f"write {DATA_DIR}/ (--data's head, --tokenizer) and "
                   f"{WHEEL_DIR}/ (the wheels for the device's Python) in the repository root, then stop")
    p.add_argument("--data", type=Path, help=f"folder of fineweb_train_*.bin / fineweb_val_*.bin shards (default: "
                   f"{DATA_DIR}/ in the repository root)")
    p.add_argument("--tokenizer", type=Path, help=f"SentencePiece model of --data, gives VOCAB_SIZE (default: "
                   f"{DATA_DIR}/{TOKENIZER_NAME})")
    p.add_argument("--wheels", type=Path, help="folder of wheels pip installs (no index) for the steps")
    p.add_argument("--out", type=Path, help="output folder; its call<N>/ must be new or empty")
    p.add_argument("--results", type=Path, help="copy summary.md, summary.json and call<N>.tgz here at the end")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at the tiny configuration")
    p.add_argument("--budget-s", type=float, help=f"wall clock of the whole call (call 1: {CALLS[1].budget_s()}, "
                   f"2: {CALLS[2].budget_s()})")
    return p


def arguments(argv, p: Parser | None = None) -> argparse.Namespace:
    """The parsed arguments with their defaults and derived paths; nothing on disk is looked at."""
    p = p or parser()
    a = p.parse_args(argv)
    if a.prepare:
        if a.call is not None or a.data is None or a.tokenizer is None:
            p.error("--prepare takes --data and --tokenizer (the source to cut from) and no --call")
        a.data, a.tokenizer = a.data.resolve(), a.tokenizer.resolve()
        return a
    if a.call is None or a.out is None:
        p.error("the following arguments are required: --call, --out (or --prepare)")
    a.data = (a.data or ROOT / DATA_DIR).resolve()
    a.tokenizer = (a.tokenizer or ROOT / DATA_DIR / TOKENIZER_NAME).resolve()
    a.out = a.out.resolve()
    a.wheels = a.wheels.resolve() if a.wheels else None
    a.results = a.results.resolve() if a.results else None
    a.train_seconds = CALLS[a.call].train_s
    a.budget_s = CALLS[a.call].budget_s() if a.budget_s is None else a.budget_s
    a.dir, a.run_id = a.out / f"call{a.call}", f"gpu_check_call{a.call}"
    a.site = a.dir / "site"
    a.log = a.dir / "train" / "logs" / f"{a.run_id}.txt"
    return a


def tokenizer_problem(path: Path) -> str | None:
    """Why path is no SentencePiece model (None: it loads)."""
    if not path.is_file():
        return f"--tokenizer {path} is not a file"
    try:
        import sentencepiece as spm
        spm.SentencePieceProcessor(model_file=str(path))
    except Exception as e:  # any failure to load is a bad argument
        first = (str(e).splitlines() or [""])[0]
        return f"--tokenizer {path} cannot be loaded ({type(e).__name__}: {first})"
    return None


def data_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"--data {path} is not a folder"
    missing = [g for g in ("fineweb_train_*.bin", "fineweb_val_*.bin") if not any(path.glob(g))]
    if missing:
        return f"--data {path} has no {' and no '.join(missing)}"
    return None


def not_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_arguments(a, p: Parser) -> None:
    """Bad input stops here, before anything runs or is written (exit 2, one line)."""
    problems = [data_problem(a.data), tokenizer_problem(a.tokenizer)]
    if a.prepare:
        problems.append(f"{ROOT / DATA_DIR} exists and is not empty; refusing to overwrite it"
                        if not_empty(ROOT / DATA_DIR) else None)
    else:
        if a.wheels is not None and not any(a.wheels.glob("*.whl")):
            problems.append(f"--wheels {a.wheels} holds no .whl file")
        if a.out.exists() and not a.out.is_dir() or not_empty(a.dir):
            problems.append(f"--out {a.out}: {a.dir} exists and is not an empty folder; refusing to overwrite it")
        if a.results is not None and any((a.results / name).exists() for name in
                                         ("summary.md", "summary.json", f"call{a.call}.tgz")):
            problems.append(f"--results {a.results} already holds a summary of call {a.call}; refusing to overwrite it")
        if a.train_seconds + CHECK_S + MIN_STEP_S > a.budget_s:
            problems.append(f"--budget-s {a.budget_s:g} cannot hold the {a.train_seconds:g} s of training and the check")
    for problem in problems:
        if problem:
            p.error(problem)
    if not a.prepare:
        import sentencepiece as spm
        a.vocab_size = spm.SentencePieceProcessor(model_file=str(a.tokenizer)).vocab_size()
        if not a.dry_run:
            import torch
            if not torch.cuda.is_available():
                p.error("CUDA is not available; on a CPU machine use --dry-run")


# ---------------------------------------------------------------- main


def prepare(a) -> int:
    """Run prepare_commands in the repository root, each printed first; exit 1 at the first that fails."""
    for cmd in prepare_commands(a.data, a.tokenizer):
        print("$ " + shlex.join(cmd), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            print(f"{PROG}: error: {shlex.join(cmd[:3])} ... failed", file=sys.stderr)
            return 1
    print(f"ready: {DATA_DIR}/ and {WHEEL_DIR}/ in {ROOT}; the device calls carry both")
    return 0


def run_call(args, started_at: float) -> int:
    n, started = args.call, datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "train_gpt.py", args.dir / "train" / "train_gpt.py")
    steps = plan(args)
    reason = run_steps(steps, args.budget_s - (time.monotonic() - started_at), say)
    res = collect(steps, args.log)
    rows = table(res, CALLS[n])
    s = {"call": n, "dry_run": args.dry_run, "ok": reason is None, "reason": reason, "started": started,
         "seconds": time.monotonic() - started_at, "budget_s": args.budget_s, "train_seconds": args.train_seconds,
         "data": str(args.data), "tokenizer": str(args.tokenizer), "device_command": device_command(n),
         "device_timeout_s": CALLS[n].timeout_s(), "travel": travel_rows() if args.dry_run else [],
         "train_log": str(args.log) if args.log.exists() else None,
         "steps": [{**vars(st), "outcome": st.outcome(), "command": st.line()} for st in steps],
         "results": res, "table": [{"metric": m, "value": v} for m, v in rows]}
    (args.dir / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n", encoding="utf-8")
    md = render(s, steps, rows)
    (args.dir / "summary.md").write_text(md, encoding="utf-8")
    print("\n" + md, flush=True)
    if args.results is not None:
        pack(args)
    if reason:
        print(f"{PROG}: error: {reason}; see {args.dir / 'summary.md'}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Exit status: 0 every step passed, 1 a step failed, 2 bad arguments. --budget-s counts from here."""
    started_at, p = time.monotonic(), parser()
    args = arguments(argv, p)
    check_arguments(args, p)
    if args.prepare:
        return prepare(args)
    return run_call(args, started_at)


if __name__ == "__main__":
    sys.exit(main())
