#!/usr/bin/env python3
"""Check the harness on one CUDA GPU in two short calls that fit the device's window (15 minutes in all).

  python tools/gpu_check.py --call 1 --data DIR --tokenizer FILE --out DIR   # <= 300 s: give the device call 330 s
  python tools/gpu_check.py --call 2 --data DIR --tokenizer FILE --out DIR   # <= 360 s: give the device call 390 s
  python tools/gpu_check.py --call N ... --dry-run   # the same steps on a CPU, tiny; prints the device command too

Call 1: gpu_tests (pytest -q -m gpu, one process), bench (tools/bench.py: nGPT, anGPT, standard at the default
shape), train (MAX_WALLCLOCK_SECONDS=60 python -m torch.distributed.run --standalone --nproc_per_node=1 train_gpt.py
in a copy in --out/call1/train/: training, export, reload, scoring; EVAL_BUDGET_SECONDS=30 bounds TTT), check
(tools/check.py on its log, script and artifact, --max-train-s 60). Call 2: train for 240 s, the script's full
evaluation (TTT), check. --out/call<N>/ gets each step's NN_<step>.stdout.txt / .stderr.txt, train/ and the summary
printed at the end (summary.md, summary.json) from bench.py's JSON line and tools/runlog.parse_log, named as
tools/check.py names them.
A step that would overrun --budget-s is killed (its process group): a timeout. Exit 1: a step failed (one-line reason);
2: bad arguments. Short runs scale WARMDOWN_ITERS, MUON_MOMENTUM_WARMUP_STEPS (SHORT_SCHEDULE); the environment wins.
--dry-run: the CPU, tools/tiny.py's TINY_TRAIN over every step's environment, TINY_BENCH, pytest --collect-only.
"""
from __future__ import annotations

import argparse, contextlib, datetime, json, math, os, re, shlex, shutil, signal, subprocess, sys, time  # noqa: E401
from pathlib import Path

from runlog import parse_log  # tools/ is on the path: the script's folder (pytest.ini puts it there too)
from tiny import TINY_BENCH, TINY_TRAIN

ROOT, PROG = Path(__file__).resolve().parents[1], "gpu_check.py"
MIN_STEP_S, KILL_GRACE_S, CHECK_S, GPU_TESTS_CAP_S = 5.0, 5.0, 15.0, 60.0
# wall clock, training, device timeout_s, train step's time beyond training (start, compile, export, scoring), its env
CALLS = {1: dict(budget_s=300.0, train_s=60.0, timeout_s=330, overhead_s=120.0, env=dict(EVAL_BUDGET_SECONDS="30")),
         2: dict(budget_s=360.0, train_s=240.0, timeout_s=390, overhead_s=105.0, env={})}
SHORT_SCHEDULE = dict(WARMDOWN_ITERS=250 / 300, MUON_MOMENTUM_WARMUP_STEPS=90 / 300)  # per s (1 GPU: ~1 step/s)
DRY_ARGS = {"gpu_tests": ["--collect-only"], "bench": TINY_BENCH}  # a dry run's extra arguments
# the device tool's call: zstandard (absent there) from carried wheels, the call, its summary and folder (no weights)
DEVICE = ("run(timeout_s={timeout}, carry=['.whl'], command=\"python3 -m pip install -q --no-index --no-deps --target "
          "/tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 tools/gpu_check.py "
          "--call {n} --data {data} --tokenizer {tok} --out /tmp/gc; rc=$?; cp /tmp/gc/call{n}/summary.md $OUT/; "
          "tar czf $OUT/call{n}.tgz --exclude='*.pt' --exclude='*.ptz' -C /tmp/gc call{n}; exit $rc\")")
MODELS, MS = {"ngpt": "nGPT", "angpt": "anGPT", "standard": "standard"}, (",.0f", " ms")
f = lambda v, spec=",.0f", unit="": "n/a" if v is None else format(v, spec) + unit  # noqa: E731
read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p and p.exists() else ""  # noqa: E731
q = lambda x: shlex.quote(str(x))  # noqa: E731


class Step:  # env: over os.environ; reserve_s: kept while earlier steps run; would_run: a dry run's full command
    def __init__(self, name, cmd, cwd, env=None, cap_s=None, reserve_s=0.0):
        self.name, self.cmd, self.cwd, self.env, self.cap_s = name, cmd, cwd, env or {}, cap_s
        self.reserve_s, self.would_run, self.stdout, self.stderr = reserve_s, None, None, None
        self.status, self.rc, self.seconds, self.timeout_s, self.note = "pending", None, None, None, ""  # ok, failed...

    failed = property(lambda self: self.status in ("failed", "timeout", "not run"))
    line = lambda self: f"cd {q(self.cwd)} && " + " ".join([f"{k}={q(v)}" for k, v in self.env.items()] + [  # noqa
        q(c) for c in self.cmd])  # the exact command, for a POSIX shell

    def outcome(self) -> str:  # 'ok', 'exit 1: <its error line>', 'timeout after 90 s', 'not run: <why>'
        return {"failed": f"exit {self.rc}", "timeout": f"timeout after {self.timeout_s or 0:.0f} s"}.get(
            self.status, self.status) + (f": {self.note}" if self.note else "")


def plan(args) -> list[Step]:
    """The call's steps. A dry run's: the same, with the tiny environment over theirs and DRY_ARGS added."""
    py, work, t, call = sys.executable, args.dir / "train", f"{args.train_seconds:g}", CALLS[args.call]
    short = {k: str(max(1, round(v * args.train_seconds))) for k, v in SHORT_SCHEDULE.items()}
    env = {**{k: os.environ.get(k, v) for k, v in {**short, **call["env"]}.items()}, "MAX_WALLCLOCK_SECONDS": t,
           "DATA_PATH": str(args.data), "TOKENIZER_PATH": str(args.tokenizer), "VOCAB_SIZE": str(args.vocab_size),
           "RUN_ID": args.run_id}
    # in one process (no pytest.ini addopts: pytest-xdist may be missing there, and GPU timings want the GPU alone)
    steps = [Step("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-o", "addopts="], ROOT, cap_s=GPU_TESTS_CAP_S),
             Step("bench", [py, "tools/bench.py"], ROOT)] if args.call == 1 else []
    steps += [Step("train", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"],
                   work, env, reserve_s=args.train_seconds + call["overhead_s"]),
              Step("check", [py, "tools/check.py", str(args.log), "--script", str(work / "train_gpt.py"), "--ptz",
                             str(work / "final_model.ptz"), "--max-train-s", t], ROOT, {}, CHECK_S, CHECK_S)]
    tiny = {**TINY_TRAIN, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for i, s in enumerate(steps, 1):
        if args.dry_run:
            s.would_run, s.cmd, s.env = s.line(), s.cmd + DRY_ARGS.get(s.name, []), {**s.env, **tiny}
        s.stdout, s.stderr = (args.dir / f"{i:02d}_{s.name}.{kind}.txt" for kind in ("stdout", "stderr"))
    return steps


def run_steps(steps: list[Step], budget_s: float, echo=print) -> str | None:
    """Each step in its own process group, stdout and stderr into its files, for min(its cap, what is left less the
    time reserved for later steps; under MIN_STEP_S: not run); on timeout SIGTERM the group, SIGKILL after KILL_GRACE_S.
    A failed step's note: the first `error: ...`/FAIL line of its stderr (else stdout), else its last line."""
    deadline = time.monotonic() + budget_s
    for i, step in enumerate(steps):
        echo(f"[{i + 1}/{len(steps)}] {step.name}: $ {step.line()}")
        left = deadline - time.monotonic() - sum(s.reserve_s for s in steps[i + 1:])
        if left < MIN_STEP_S:
            step.status, step.note = "not run", f"only {max(left, 0):.0f} s of --budget-s left for it"
        else:
            step.timeout_s, t0, _ = min(step.cap_s or math.inf, left), time.monotonic(), step.cwd.mkdir(parents=True,
                                                                                          exist_ok=True)
            with open(step.stdout, "w") as out, open(step.stderr, "w") as err:
                proc = subprocess.Popen([str(c) for c in step.cmd], cwd=step.cwd, env={**os.environ, **step.env},
                                        stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    step.status = "ok" if proc.wait(timeout=step.timeout_s) == 0 else "failed"
                except subprocess.TimeoutExpired:
                    step.status = "timeout"
                finally:  # a timeout, or Ctrl-C: take the step's processes down
                    for sig in (signal.SIGTERM, signal.SIGKILL) if proc.returncode is None else ():
                        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                            os.killpg(proc.pid, sig), proc.wait(timeout=KILL_GRACE_S)
                            break
            step.seconds, step.rc = time.monotonic() - t0, proc.returncode
            lines = (read(step.stderr).strip() or read(step.stdout).strip()).splitlines() if step.failed else []
            step.note = next((ln for ln in lines if re.search(r"(^|: )error: |^FAIL ", ln)), lines[-1] if lines else "")
        echo(f"  {step.outcome()}" + (f" ({step.seconds:.1f} s, limit {step.timeout_s:.0f} s)" if step.seconds else ""))
    bad = [f"{s.name} ({s.outcome()[:300]})" for s in steps if s.failed]
    return f"{len(bad)} of {len(steps)} steps failed: " + ", ".join(bad) if bad else None


def collect(steps: list[Step], log: Path) -> dict:
    """bench.py's last line when a JSON object; pytest -q's final line ('1 passed in 80.12s', '1/204 tests collected
    ...') and the node ids it listed; the train log parsed (less its source); check.py's exit and FAIL lines."""
    by, bench, c = {s.name: s for s in steps}, None, steps[-1]
    last = next((ln for ln in reversed(read(by.get("bench") and by["bench"].stdout).split("\n")) if ln.strip()), "")
    with contextlib.suppress(ValueError):
        bench = json.loads(last) if last.startswith("{") else None
    lines = [ln.strip().strip("=").strip() for ln in read(by.get("gpu_tests") and by["gpu_tests"].stdout).splitlines()]
    fails = [ln for ln in read(c.stderr).splitlines() if ln.startswith("FAIL ")]
    return {"gpu_tests": {"summary": next((ln for ln in reversed(lines) if ln), None), "tests": [
                ln for ln in lines if "::" in ln and " " not in ln]} if "gpu_tests" in by else None,
            "bench": bench if isinstance(bench, dict) else None,
            "train": {k: v for k, v in parse_log(log).items() if k != "source"} if log.exists() else None,
            "check": {"passed": c.rc == 0, "exit": c.rc, "violations": fails} if c.status in ("ok", "failed") else None}


def table(res: dict) -> list[tuple[str, str]]:
    """(metric, value) rows; 'n/a' where the run produced no number. Call 1 adds the GPU tests' and bench's."""
    rows, g, b = [], res["gpu_tests"], res["bench"] or {}
    if g is not None:
        per = [(b.get(k) or {}, v) for k, v in MODELS.items()]
        rows += [("GPU tests", f"{g['summary'] or 'n/a'}" + (f": {', '.join(g['tests'])}" if g["tests"] else "")),
                 ("bench hardware, compile, shape", f"{b.get('hardware')}, {b.get('compile')}, {b.get('shape')}")]
        for m, label in per:
            rows += [(f"ms/step {label}", f"{f(m.get('ms_median'), '.2f')} (IQR {f(m.get('ms_q1'), '.2f')}-"
                      f"{f(m.get('ms_q3'), '.2f')})"), (f"MFU {label}", "n/a on CPU" if b.get("hardware") == "cpu" else
                      f"{100 * m['mfu']:.1f}% of {b['peak_tflops']:g} TFLOP/s" if m.get("mfu") else "n/a"),
                     (f"bench compile + warm-up {label}", f(m.get("warmup_s"), ".1f", f" s ({b.get('warmup')} steps)"))]
            rows += [(f"bench {k.replace('_', ' ')} {label}", f(v)) for k, v in m.items() if "peak_mem" in k]
        rows += [(f"ratio {MODELS[x]}/{MODELS[y]}", f(b.get(f"ratio_{x}_over_{y}"), ".3f"))
                 for x, y in (("ngpt", "standard"), ("angpt", "standard"), ("angpt", "ngpt"))]
    t = res["train"] or {}
    ttt, sub, sl = t.get("ttt") or {}, t.get("submission_bytes") or {}, t.get("sliding_score")
    plain = ("(sliding window)", sl) if sl else ("(no sliding window: final_roundtrip_plain)", t.get("roundtrip_plain"))
    rows += [("final score (TTT: final_ttt_roundtrip val_bpb)", f((t.get("ttt_score") or {}).get("val_bpb"), ".8f")),
             (f"plain score {plain[0]}", f((plain[1] or {}).get("val_bpb"), ".4f")),
             ("TTT gain (gain_bpb)", f"{ttt['gain_bpb']:+.4f} vs {ttt['vs']}, {ttt['docs']} docs, {f(ttt['tokens'])} "
              f"tokens, {f(ttt['time_ms'], *MS)}, {f(t.get('ttt_docs_unadapted'))} docs unadapted by the deadline"
              if ttt else "n/a"),
             ("TTT full split on 8 devices like this (8x H100 projection)", f(ttt.get("full_split_8x_s"), ".0f", " s")),
             ("quant gap (quant_gap_bpb)", f(t.get("quant_gap_bpb"), "+.4f")),
             ("step_avg", f(t.get("step_avg_ms"), ".2f", " ms") + f" ({f(t.get('steps'))} steps)"),
             ("training time (calibration included)", f(t.get("train_time_ms"), *MS)),
             ("calibration time", f(t.get("calibration_ms"), *MS)), ("export time", f(t.get("export_time_ms"), *MS)),
             ("artifact bytes", "n/a" if sub.get("total") is None else
              f"{sub['total']:,} (code {sub['code']:,} + model {sub['model']:,}; limit {sub['limit']:,})"),
             ("evaluation time (eval_phase_time)", f(t.get("eval_phase_time_ms"), *MS)),
             ("artifact_load_time", f(t.get("artifact_load_time_ms"), *MS))]
    peak, c, fallbacks = t.get("peak_memory") or {}, res["check"], t.get("gptq_fallback") or []
    rows += [(f"peak memory {phase}", ", ".join(f"{k[:-4]} {v:,.0f} MiB" for k, v in (peak.get(phase) or {}).items()
                                                 if v is not None) or "n/a")
             for phase in dict.fromkeys(["train", "calibration", "eval", "ttt", *peak])]
    return rows + [("GPTQ fallbacks (gptq_fallback)", f(sum(x["count"] or 0 for x in fallbacks) if t else None)),
                   ("check.py", "n/a" if c is None else "PASS" if c["passed"] else
                    f"FAIL (exit {c['exit']}): " + "; ".join(c["violations"]))]


def render(s: dict, steps: list[Step], rows) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    mode, result = "dry run (CPU, tiny configuration: not the GPU numbers)" if s["dry_run"] else "full run", s["reason"]
    lines = [f"# gpu_check call {s['call']}: {mode}", "", f"{s['started']} | {s['seconds']:.0f} s of --budget-s "
             f"{s['budget_s']:g} | training {s['train_seconds']:g} s | data {s['data']} | result: "
             + (f"FAIL: {result}" if result else "PASS"), "",
             "| # | step | status | seconds | command (logs) |\n| --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {st.name} | {cell(st.outcome())} | {f(st.seconds, '.1f')} | "
              f"{cell(f'`{st.line()}` ({st.stdout.name}, {st.stderr.name})')} |" for i, st in enumerate(steps, 1)]
    if s["dry_run"]:
        lines += ["", "## Would run on the device", ""] + [f"- {st.name}: would run: `{st.would_run}`" for st in steps]
        lines += ["", f"On the device: `{s['device_command']}`"]
    lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
    return "\n".join(lines + [f"| {cell(m)} | {cell(v)} |" for m, v in rows] + ["", f"Train log: {s['train_log']}", ""])


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda message: (print(f"{PROG}: error: {message}", file=sys.stderr), sys.exit(2))
    p.add_argument("--call", type=int, choices=sorted(CALLS), required=True, help="which of the two calls to run")
    p.add_argument("--data", type=Path, required=True, help="folder of fineweb_train_*.bin / fineweb_val_*.bin shards")
    p.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece model of --data (gives VOCAB_SIZE)")
    p.add_argument("--out", type=Path, required=True, help="output folder; its call<N>/ must be new or empty")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at the tiny configuration")
    p.add_argument("--budget-s", type=float, help="wall clock of the whole call (call 1: 300, 2: 360)")
    a = p.parse_args(argv)
    a.train_seconds, a.budget_s = (c := CALLS[a.call])["train_s"], c["budget_s"] if a.budget_s is None else a.budget_s
    a.data, a.tokenizer, a.out = a.data.resolve(), a.tokenizer.resolve(), a.out.resolve()
    a.dir, a.run_id = a.out / f"call{a.call}", f"gpu_check_call{a.call}"
    a.log, missing = a.dir / "train" / "logs" / f"{a.run_id}.txt", [
        g for g in ("fineweb_train_*.bin", "fineweb_val_*.bin") if not any(a.data.glob(g))]
    for bad, message in [
            (not a.data.is_dir(), f"--data {a.data} is not a folder"),
            (bool(missing), f"--data {a.data} has no {' and no '.join(missing)}"),
            (not a.tokenizer.is_file(), f"--tokenizer {a.tokenizer} is not a file"),
            (a.out.exists() and not a.out.is_dir() or a.dir.is_dir() and any(a.dir.iterdir()),
             f"--out {a.out}: {a.dir} exists and is not an empty folder; refusing to overwrite it"),
            (not a.train_seconds + CHECK_S + MIN_STEP_S <= a.budget_s,
             f"--budget-s {a.budget_s:g} cannot hold the {a.train_seconds:g} s of training and the check")]:
        if bad:
            p.error(message)
    try:
        import sentencepiece as spm
        a.vocab_size = spm.SentencePieceProcessor(model_file=str(a.tokenizer)).vocab_size()
    except Exception as e:  # noqa: BLE001 - any failure to load is a bad argument
        p.error(f"--tokenizer {a.tokenizer} cannot be loaded ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    if not a.dry_run and not __import__("torch").cuda.is_available():
        p.error("CUDA is not available; on a CPU machine use --dry-run")
    return a


def main(argv=None) -> int:
    """Exit status: 0 every step passed, 1 a step failed, 2 bad arguments. --budget-s counts from the start."""
    started_at, args = time.monotonic(), parse_args(argv)
    started, n = datetime.datetime.now().astimezone().isoformat(timespec="seconds"), args.call
    args.log.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "train_gpt.py", args.dir / "train" / "train_gpt.py")
    steps = plan(args)
    reason = run_steps(steps, args.budget_s - (time.monotonic() - started_at), lambda m: print(m, flush=True))
    res = collect(steps, args.log)
    rows = table(res)
    rel = [q(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in (args.data, args.tokenizer)]  # travels
    device = DEVICE.format(timeout=CALLS[n]["timeout_s"], n=n, data=rel[0], tok=rel[1])
    s = {"call": n, "dry_run": args.dry_run, "ok": reason is None, "reason": reason, "started": started,
         "seconds": time.monotonic() - started_at, "budget_s": args.budget_s, "train_seconds": args.train_seconds,
         "data": str(args.data), "tokenizer": str(args.tokenizer), "device_command": device,
         "train_log": str(args.log) if args.log.exists() else None, "device_timeout_s": CALLS[n]["timeout_s"],
         "steps": [{**vars(st), "outcome": st.outcome(), "command": st.line()} for st in steps],
         "results": res, "table": [{"metric": m, "value": v} for m, v in rows]}
    (args.dir / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n", encoding="utf-8")
    (args.dir / "summary.md").write_text(md := render(s, steps, rows), encoding="utf-8")
    print("\n" + md, flush=True)
    if reason:
        print(f"{PROG}: error: {reason}; see {args.dir / 'summary.md'}", file=sys.stderr)
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
