"""tools/gpu_check.py on the CPU: the dry run of each call end to end on the tiny shards (the very steps of the full
plan under tools/tiny.py's environment), the plans themselves, a failing step, argument errors, the timeout kill, and
the summary's rows read from synthetic logs and bench output."""
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from _logs import FAKE_SOURCE, REPO, SEPARATOR
from tools import gpu_check, tiny
from tools.gpu_check import Step, collect, plan, run_steps, table
from tools.runlog import parse_log

GPU_CHECK = [sys.executable, str(REPO / "tools" / "gpu_check.py")]
TINY_ENV = {**tiny.TINY_TRAIN, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
TRAIN_ROWS = ["final score (TTT: final_ttt_roundtrip val_bpb)", "TTT gain (gain_bpb)",
              "TTT full split on 8 devices like this (8x H100 projection)", "quant gap (quant_gap_bpb)", "step_avg",
              "training time (calibration included)", "calibration time", "export time", "artifact bytes",
              "evaluation time (eval_phase_time)", "artifact_load_time", "peak memory train", "peak memory calibration",
              "peak memory eval", "peak memory ttt", "GPTQ fallbacks (gptq_fallback)", "check.py"]
BENCH_ROWS = ["GPU tests", "ms/step nGPT", "ms/step anGPT", "ms/step standard", "ratio nGPT/standard",
              "ratio anGPT/standard", "ratio anGPT/nGPT", "MFU nGPT", "bench compile + warm-up nGPT"]


def data_args(shards):
    return ["--data", shards.data_path, "--tokenizer", shards.tokenizer_path]


def args_for(call, shards, out, dry_run):
    """The namespace parse_args builds, without its checks (a full plan needs no CUDA to be planned)."""
    d = out.resolve() / f"call{call}"
    return SimpleNamespace(call=call, dry_run=dry_run, data=Path(shards.data_path).resolve(),
                           tokenizer=Path(shards.tokenizer_path).resolve(),
                           vocab_size=shards.vocab_size, train_seconds=gpu_check.CALLS[call]["train_s"], dir=d,
                           run_id=f"gpu_check_call{call}", log=d / "train" / "logs" / f"gpu_check_call{call}.txt")


@pytest.fixture(scope="module")
def dry_runs(tiny_shards, tmp_path_factory):
    """Both calls' dry runs, side by side (each runs its steps one after another on one thread): call -> namespace."""
    def dry_run(call):
        out = tmp_path_factory.mktemp(f"gpu_check_call{call}") / "out"
        t0 = time.perf_counter()
        run = subprocess.run(GPU_CHECK + ["--call", str(call), *data_args(tiny_shards), "--out", str(out), "--dry-run"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
                             cwd=REPO)
        seconds = time.perf_counter() - t0
        path = out / f"call{call}" / "summary.json"
        return SimpleNamespace(call=call, run=run, out=out, dir=path.parent, seconds=seconds,
                               summary=json.loads(path.read_text()) if path.exists() else None)
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip((1, 2), pool.map(dry_run, (1, 2))))
    print(", ".join(f"gpu_check --call {c} --dry-run took {r.seconds:.1f}s" for c, r in runs.items()))
    return runs


@pytest.mark.parametrize("call", [1, 2])
def test_dry_run_of_each_call(call, dry_runs, tiny_shards, monkeypatch):
    dry_run = dry_runs[call]
    run, s = dry_run.run, dry_run.summary
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert s["ok"] and s["reason"] is None and s["call"] == call and s["dry_run"]
    names = ["gpu_tests", "bench", "train", "check"] if call == 1 else ["train", "check"]
    assert [st["name"] for st in s["steps"]] == names and all(st["status"] == "ok" for st in s["steps"])
    assert all((dry_run.dir / st["stdout"]).is_file() and (dry_run.dir / st["stderr"]).is_file() for st in s["steps"])
    assert dry_run.seconds < 100  # call 1 about 30 s beside call 2 on 2 cores

    # the dry run's steps are the full plan's under the tiny environment, the would-run lines the full commands
    for key in ("WARMDOWN_ITERS", "MUON_MOMENTUM_WARMUP_STEPS", "EVAL_BUDGET_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    full = plan(args_for(call, tiny_shards, dry_run.out, dry_run=False))
    for got, want in zip(s["steps"], full, strict=True):
        assert got["would_run"] == want.line() and got["would_run"] in run.stdout
        assert got["cmd"] == [str(c) for c in want.cmd + gpu_check.DRY_ARGS.get(want.name, [])]
        assert got["env"] == {**want.env, **TINY_ENV} and got["cwd"] == str(want.cwd)
    would = {st["name"]: st["would_run"] for st in s["steps"]}
    assert f"MAX_WALLCLOCK_SECONDS={60 if call == 1 else 240} " in would["train"]
    assert would["train"].endswith(" -m torch.distributed.run --standalone --nproc_per_node=1 train_gpt.py")
    assert would["check"].endswith(f" --max-train-s {60 if call == 1 else 240}")
    if call == 1:
        assert would["gpu_tests"].endswith(" -m pytest -q -m gpu -o addopts=") and would["bench"].endswith(" tools/bench.py")
    device = f"run(timeout_s={330 if call == 1 else 390}, carry=['.whl'], command=\""
    assert device in run.stdout and f"python3 tools/gpu_check.py --call {call} --data " in s["device_command"]

    # the summary: printed at the end, written, its rows named and filled from the tiny run's log
    md = (dry_run.dir / "summary.md").read_text()
    assert md.strip() in run.stdout and "dry run (CPU, tiny configuration" in md
    rows = {r["metric"]: r["value"] for r in s["table"]}
    assert list(rows) == [r["metric"] for r in s["table"]]
    for name in TRAIN_ROWS + (BENCH_ROWS if call == 1 else []):
        assert name in rows and rows[name] != "n/a" and f"| {name} | " in md, (name, rows.get(name))
    log = parse_log(dry_run.dir / "train" / "logs" / f"gpu_check_call{call}.txt")
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == f"{log['ttt_score']['val_bpb']:.8f}"
    assert log["ttt_score"]["val_bpb"] == log["final_exact"]["val_bpb"]  # TTT's is the score check.py checks
    assert rows["plain score (no sliding window: final_roundtrip_plain)"] == f"{log['roundtrip_plain']['val_bpb']:.4f}"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "0" and rows["check.py"] == "PASS"
    assert rows["peak memory ttt"].startswith("maxrss ") and rows["peak memory ttt"].endswith(" MiB")
    ptz = dry_run.dir / "train" / "final_model.ptz"
    assert s["results"]["train"]["submission_bytes"]["model"] == ptz.stat().st_size
    if call == 1:
        assert "tests/test_bench.py::test_default_shape_on_gpu" in rows["GPU tests"]
        assert re.search(r"\d+/\d+ tests collected", rows["GPU tests"])
        assert rows["MFU nGPT"] == "n/a on CPU" and s["results"]["bench"]["shape"]["model_dim"] == 64
        b = s["results"]["bench"]
        assert rows["ratio nGPT/standard"] == f"{b['ngpt']['ms_median'] / b['standard']['ms_median']:.3f}"


def test_full_plans(tmp_path, tiny_shards, monkeypatch):
    """The issue's commands, the short schedule scaled to the training time with the environment winning, the train
    step's reserve, the check's cap."""
    monkeypatch.delenv("WARMDOWN_ITERS", raising=False)
    monkeypatch.delenv("EVAL_BUDGET_SECONDS", raising=False)
    monkeypatch.setenv("MUON_MOMENTUM_WARMUP_STEPS", "77")
    py = sys.executable
    for call, seconds, warmdown in ((1, "60", "50"), (2, "240", "200")):
        steps = plan(args_for(call, tiny_shards, tmp_path, dry_run=False))
        by = {s.name: s for s in steps}
        assert list(by) == (["gpu_tests", "bench", "train", "check"] if call == 1 else ["train", "check"])
        if call == 1:
            assert by["gpu_tests"].cmd == [py, "-m", "pytest", "-q", "-m", "gpu", "-o", "addopts="]
            assert by["bench"].cmd == [py, "tools/bench.py"]
            assert by["gpu_tests"].env == by["bench"].env == {} and by["gpu_tests"].cwd == REPO
        train, check, work = by["train"], by["check"], tmp_path.resolve() / f"call{call}" / "train"
        assert train.cmd == [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"]
        eval_budget = {"EVAL_BUDGET_SECONDS": "30"} if call == 1 else {}
        assert train.cwd == work and train.env == {
            "WARMDOWN_ITERS": warmdown, "MUON_MOMENTUM_WARMUP_STEPS": "77", **eval_budget,
            "MAX_WALLCLOCK_SECONDS": seconds, "DATA_PATH": str(Path(tiny_shards.data_path).resolve()),
            "TOKENIZER_PATH": str(Path(tiny_shards.tokenizer_path).resolve()),
            "VOCAB_SIZE": str(tiny_shards.vocab_size), "RUN_ID": f"gpu_check_call{call}"}
        assert train.reserve_s == float(seconds) + gpu_check.CALLS[call]["overhead_s"]
        assert check.cmd == [py, "tools/check.py", str(work / "logs" / f"gpu_check_call{call}.txt"), "--script",
                             str(work / "train_gpt.py"), "--ptz", str(work / "final_model.ptz"),
                             "--max-train-s", seconds]
        assert check.cap_s == check.reserve_s == gpu_check.CHECK_S and all(s.would_run is None for s in steps)
        assert [s.stdout.name for s in steps][-1] == f"{len(steps):02d}_check.stdout.txt"
    monkeypatch.setenv("EVAL_BUDGET_SECONDS", "99")
    assert plan(args_for(1, tiny_shards, tmp_path, dry_run=False))[2].env["EVAL_BUDGET_SECONDS"] == "99"


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failing_step_gives_exit_1_and_a_one_line_reason(tiny_shards, tmp_path, monkeypatch, capsys):
    """main() with stand-in steps: the bench fails, the later steps still run, the train writes no log (the summary
    says n/a), and the exit status is 1 with the failure on one line."""
    def fake_plan(args):
        steps = [Step("bench", py("import sys; print('not json'); sys.exit('bench.py: error: no CUDA')"), tmp_path),
                 Step("train", py("print('no log written')"), tmp_path), Step("check", py("print('ok')"), tmp_path)]
        for s in steps:
            s.stdout, s.stderr = args.dir / f"{s.name}.out", args.dir / f"{s.name}.err"
        return steps
    monkeypatch.setattr(gpu_check, "plan", fake_plan)
    out = tmp_path / "out"
    assert gpu_check.main(["--call", "1", *data_args(tiny_shards), "--out", str(out), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check.py: error: 1 of 3 steps failed: bench (exit 1: bench.py: "
                                               "error: no CUDA); see "), err
    s = json.loads((out / "call1" / "summary.json").read_text())
    assert not s["ok"] and [st["status"] for st in s["steps"]] == ["failed", "ok", "ok"]
    rows = {r["metric"]: r["value"] for r in s["table"]}
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "n/a"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "n/a"
    assert "| 1 | bench | exit 1: bench.py: error: no CUDA |" in (out / "call1" / "summary.md").read_text()


def test_timeout_kills_the_process_group_and_later_steps_still_run(tmp_path):
    child = ("import subprocess, sys, time\n"
             "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n")
    # 53 s kept for the last step: the first two get 7 s each, the third (after the 3 s timeout) under MIN_STEP_S
    steps = [Step("fails", py("import sys; print('error: boom', file=sys.stderr); sys.exit(3)"), tmp_path),
             Step("slow", py(child + "print(c.pid, flush=True); time.sleep(60)"), tmp_path, cap_s=3),
             Step("starved", py("print('x')"), tmp_path), Step("last", py("print('last')"), tmp_path, reserve_s=53)]
    for s in steps:
        s.stdout, s.stderr = tmp_path / f"{s.name}.out", tmp_path / f"{s.name}.err"
    t0 = time.monotonic()
    reason = run_steps(steps, budget_s=60, echo=lambda _: None)
    assert time.monotonic() - t0 < 40
    fails, slow, starved, last = steps
    assert slow.status == "timeout" and slow.timeout_s == 3 and slow.outcome().startswith("timeout after 3 s: ")
    pid = int(slow.stdout.read_text())
    time.sleep(0.5)
    state = (open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}/stat") else "gone")
    assert state in ("gone", "Z"), state  # the grandchild went with its group
    assert (fails.status, fails.rc, fails.note) == ("failed", 3, "error: boom")
    assert starved.status == "not run" and "of --budget-s left" in starved.note and not starved.stdout.exists()
    assert last.status == "ok" and last.stdout.read_text() == "last\n"
    assert "\n" not in reason and reason.startswith("3 of 4 steps failed: fails (exit 3: error: boom), slow (timeout "
                                                    f"after 3 s: {pid}), starved (not run: only ")


@pytest.mark.parametrize("case", ["no_call", "bad_call", "no_data", "no_shards", "no_tokenizer", "bad_tokenizer",
                                  "out_not_empty", "budget"])
def test_bad_arguments_exit_2_with_one_line(case, tiny_shards, tmp_path, capsys):
    out, base = tmp_path / "out", ["--call", "1", *data_args(tiny_shards), "--dry-run"]
    (tmp_path / "junk.model").write_text("not a model")
    args = {"no_call": base[2:], "bad_call": ["--call", "3", *base[2:]],
            "no_data": ["--call", "1", "--data", str(tmp_path / "nope"), *base[4:]],
            "no_shards": ["--call", "1", "--data", str(tmp_path), *base[4:]],
            "no_tokenizer": [*base[:4], "--tokenizer", str(tmp_path / "nope.model"), "--dry-run"],
            "bad_tokenizer": [*base[:4], "--tokenizer", str(tmp_path / "junk.model"), "--dry-run"],
            "out_not_empty": base, "budget": [*base, "--budget-s", "70"]}[case]
    reason = {"no_call": "--call", "bad_call": "invalid choice", "no_data": "is not a folder",
              "no_shards": "has no fineweb_train_*.bin", "no_tokenizer": "is not a file", "bad_tokenizer":
              "cannot be loaded", "out_not_empty": "refusing to overwrite", "budget": "cannot hold the 60 s"}[case]
    if case == "out_not_empty":
        (out / "call1").mkdir(parents=True)
        (out / "call1" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        gpu_check.main([*args, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("gpu_check.py: error:") and reason in err[0], err
    assert [p.name for p in (out / "call1").iterdir()] == ["keep.txt"] if case == "out_not_empty" else not out.exists()


def test_full_run_needs_cuda_and_help(tiny_shards, tmp_path):
    import torch
    if not torch.cuda.is_available():
        run = subprocess.run(GPU_CHECK + ["--call", "2", *data_args(tiny_shards), "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and run.stderr.strip() == ("gpu_check.py: error: CUDA is not available; on a CPU "
                                                              "machine use --dry-run")
        assert not (tmp_path / "out").exists()
    run = subprocess.run(GPU_CHECK + ["--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "pytest -q -m gpu" in run.stdout and "give the device call 390 s" in run.stdout
    assert all(flag in run.stdout for flag in ("--call", "--data", "--tokenizer", "--out", "--dry-run", "--budget-s"))


SYNTHETIC = """hardware:1x NVIDIA H200
step:300/20000 train_loss:3.1000 train_time:59000ms step_avg:196.67ms
peak_memory allocated:40000MiB reserved:41000MiB
calibration method:gptq batches:4 tokens:393216 time:1500ms train_time:60500ms
peak_memory phase:calibration allocated:42000MiB reserved:43000MiB
pre_quant val_loss:2.9000 val_bpb:1.1700
gptq_fallback:2 blocks.0.q:diag,blocks.3.up:damp
export method:gptq step:0.5xRMS model_bytes:15900000 bytes_per_param:0.3000 export_time:12345ms
submission_bytes code:20000 model:15900000 total:15920000 limit:16000000
ttt_warmup_time:30000ms (random tokens, before the evaluation clock)
artifact_load_time:250ms
final_roundtrip_plain val_loss:2.9100 val_bpb:1.1750 eval_time:9000ms
quant_gap_bpb:0.0050
final_roundtrip val_loss:2.8800 val_bpb:1.1600 eval_time:90000ms
final_roundtrip_exact val_loss:2.88001234 val_bpb:1.16004321
peak_memory phase:eval allocated:30000MiB reserved:31000MiB
final_ttt_roundtrip val_loss:2.8000 val_bpb:1.1300 eval_time:200000ms
final_ttt_roundtrip_exact val_loss:2.80001234 val_bpb:1.13004321
ttt gain_bpb:-0.0300 vs:sliding docs:50000 tokens:63779840 time:200000ms full_split_8x_this_device:25s
ttt_nonfinite_docs:0
ttt_deadline docs_unadapted:12 at:500.0s first:1,2
peak_memory phase:ttt allocated:50000MiB reserved:52000MiB
eval_phase_time:310000ms
"""


def test_summary_rows_from_a_synthetic_log(tmp_path):
    """parse_log's new keys and the rows made of them: the TTT score and the sliding-window score on their own rows,
    the TTT gain and projection, every time, the peak memory per phase (a line without phase: is training's)."""
    path = tmp_path / "log.txt"
    path.write_text(FAKE_SOURCE + "\n" + SEPARATOR + "\n" + SYNTHETIC)
    log = parse_log(path)
    assert log["ttt_score"] == {"val_loss": 2.80001234, "val_bpb": 1.13004321, "eval_time_ms": 200000.0}
    assert log["sliding_score"] == {"val_loss": 2.88001234, "val_bpb": 1.16004321, "eval_time_ms": 90000.0}
    assert log["final_exact"] == {"val_loss": 2.80001234, "val_bpb": 1.13004321}  # unchanged: the last exact line
    assert log["final_roundtrip"]["val_bpb"] == 1.13 and log["eval_time_ms"] == 310000.0
    assert log["ttt"] == {"gain_bpb": -0.03, "vs": "sliding", "docs": 50000, "tokens": 63779840, "time_ms": 200000.0,
                          "full_split_8x_s": 25.0} and log["ttt_docs_unadapted"] == 12
    assert (log["export_time_ms"], log["artifact_load_time_ms"], log["calibration_ms"]) == (12345.0, 250.0, 1500.0)
    assert log["peak_memory"] == {
        "train": {"allocated_mib": 40000.0, "reserved_mib": 41000.0, "maxrss_mib": None},
        "calibration": {"allocated_mib": 42000.0, "reserved_mib": 43000.0, "maxrss_mib": None},
        "eval": {"allocated_mib": 30000.0, "reserved_mib": 31000.0, "maxrss_mib": None},
        "ttt": {"allocated_mib": 50000.0, "reserved_mib": 52000.0, "maxrss_mib": None}}
    assert log["gptq_fallback"] == [{"count": 2, "matrices": "blocks.0.q:diag,blocks.3.up:damp"}]
    rows = dict(table({"gpu_tests": None, "bench": None, "train": log, "check": {"passed": True, "exit": 0,
                                                                                "violations": []}}))
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "1.13004321"
    assert rows["plain score (sliding window)"] == "1.1600"
    assert rows["TTT gain (gain_bpb)"] == ("-0.0300 vs sliding, 50000 docs, 63,779,840 tokens, 200,000 ms, 12 docs "
                                           "unadapted by the deadline")
    assert rows["TTT full split on 8 devices like this (8x H100 projection)"] == "25 s"
    assert (rows["quant gap (quant_gap_bpb)"], rows["step_avg"]) == ("+0.0050", "196.67 ms (300 steps)")
    assert rows["training time (calibration included)"] == "60,500 ms" and rows["calibration time"] == "1,500 ms"
    assert rows["export time"] == "12,345 ms" and rows["artifact_load_time"] == "250 ms"
    assert rows["evaluation time (eval_phase_time)"] == "310,000 ms"
    assert rows["artifact bytes"] == "15,920,000 (code 20,000 + model 15,900,000; limit 16,000,000)"
    assert rows["peak memory train"] == "allocated 40,000 MiB, reserved 41,000 MiB"
    assert rows["peak memory ttt"] == "allocated 50,000 MiB, reserved 52,000 MiB"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "2" and rows["check.py"] == "PASS"
    assert "GPU tests" not in rows and "ms/step nGPT" not in rows  # call 2 has no bench

    path.write_text(SEPARATOR + "\nstep:8/8 train_loss:5.0 train_time:900ms step_avg:112.50ms\n"
                    "peak_memory maxrss:565MiB\nfinal_roundtrip_plain val_loss:5.1 val_bpb:3.2 eval_time:9ms\n")
    log = parse_log(path)
    assert log["peak_memory"] == {"train": {"allocated_mib": None, "reserved_mib": None, "maxrss_mib": 565.0}}
    assert log["ttt"] is None and log["ttt_docs_unadapted"] is None and log["gptq_fallback"] == []
    rows = dict(table({"gpu_tests": None, "bench": None, "train": log, "check": None}))
    assert rows["peak memory train"] == "maxrss 565 MiB" and rows["peak memory ttt"] == "n/a"
    assert rows["plain score (no sliding window: final_roundtrip_plain)"] == "3.2000"
    assert rows["TTT gain (gain_bpb)"] == rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "n/a"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "0" and rows["check.py"] == "n/a"


def test_bench_and_pytest_rows(tmp_path):
    """bench.py's final JSON line (on a GPU: MFU; peak memory when it reports one) and pytest's final line."""
    bench = {"mode": "train", "hardware": "NVIDIA H200", "compile": True, "warmup": 10, "peak_tflops": 989.0,
             "shape": {"model_dim": 512}, "ratio_ngpt_over_standard": 1.25, "ratio_angpt_over_standard": 1.2,
             "ratio_angpt_over_ngpt": 0.96}
    for i, name in enumerate(("ngpt", "angpt", "standard")):
        bench[name] = {"ms_median": 100.0 + i, "ms_q1": 99.0, "ms_q3": 102.5, "mfu": 0.4, "warmup_s": 31.5,
                       "peak_memory_mib": 50000}
    steps = [Step(n, ["true"], tmp_path) for n in ("gpu_tests", "bench", "check")]
    for s in steps:
        s.stdout, s.stderr = tmp_path / f"{s.name}.out", tmp_path / f"{s.name}.err"
    steps[0].stdout.write_text("..\n=========== 2 passed, 1 skipped in 85.21s (0:01:25) ===========\n")
    steps[1].stdout.write_text("shape line\n" + json.dumps(bench) + "\n\n")
    steps[2].stderr.write_text("FAIL training time: 61 s (limit: 60 s)\n")
    steps[2].status, steps[2].rc = "failed", 1
    res = collect(steps, tmp_path / "absent.txt")
    assert res["bench"] == bench and res["gpu_tests"] == {"summary": "2 passed, 1 skipped in 85.21s (0:01:25)",
                                                          "tests": []}
    rows = dict(table(res))
    assert rows["GPU tests"] == "2 passed, 1 skipped in 85.21s (0:01:25)"
    assert rows["ms/step anGPT"] == "101.00 (IQR 99.00-102.50)" and rows["ratio nGPT/standard"] == "1.250"
    assert rows["MFU standard"] == "40.0% of 989 TFLOP/s"
    assert rows["bench compile + warm-up nGPT"] == "31.5 s (10 steps)"
    assert rows["bench peak memory mib nGPT"] == "50,000"
    assert rows["check.py"] == "FAIL (exit 1): FAIL training time: 61 s (limit: 60 s)"
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "n/a"
    steps[1].stdout.write_text('{"a": 1}\ntrailing text\n')
    assert collect(steps, tmp_path / "absent.txt")["bench"] is None
