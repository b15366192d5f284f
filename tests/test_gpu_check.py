"""tools/gpu_check.py: its --dry-run on the CPU (tiny stand-ins really run, CUDA steps named as "would run"), its
argument errors, its step runner (a failed step is reported and later steps still run), and a full run on a GPU."""
import json
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from _logs import REPO
from tools import gpu_check
from tools.gpu_check import Step, failure_reason, run_steps

GPU_CHECK = [sys.executable, str(REPO / "tools" / "gpu_check.py")]


def cli(*args, env=None, timeout=300):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(GPU_CHECK + [str(a) for a in args], env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def data_args(shards):
    return ["--data", shards.data_path, "--tokenizer", shards.tokenizer_path]


@pytest.fixture(scope="module")
def dry_run(tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    t0 = time.perf_counter()
    run = cli(*data_args(tiny_shards), "--out", out, "--dry-run")
    seconds = time.perf_counter() - t0
    print(f"gpu_check --dry-run took {seconds:.1f}s")
    return SimpleNamespace(run=run, out=out, seconds=seconds,
                           summary=json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists()
                           else None)


def test_dry_run_runs_the_cpu_steps_and_names_the_gpu_commands(dry_run, tiny_shards):
    run, out, summary = dry_run.run, dry_run.out, dry_run.summary
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["dry_run"] and summary["ok"] and summary["reason"] is None
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["gpu_tests", "bench", "bench_eval", "train", "check"]
    assert steps["gpu_tests"]["status"] == "would run" and steps["gpu_tests"]["command"] is None
    assert "tests/test_bench.py::test_default_shape_on_gpu" in steps["gpu_tests"]["note"]
    for name in ("bench", "bench_eval", "train", "check"):
        step = steps[name]
        assert step["status"] == "ok" and step["rc"] == 0 and step["seconds"] > 0, step
        assert (out / step["stdout"]).is_file() and (out / step["stderr"]).is_file()

    # the exact GPU commands, in the summary, summary.md and the console
    would = {name: steps[name]["would_run"] for name in ("gpu_tests", "bench", "bench_eval", "train")}
    assert would["gpu_tests"].endswith(" -m pytest -q -m gpu")
    assert would["bench"].endswith(" tools/bench.py")
    assert would["bench_eval"].endswith(" tools/bench.py --mode eval")
    assert "MAX_WALLCLOCK_SECONDS=300 " in would["train"] and f"DATA_PATH={tiny_shards.data_path} " in would["train"]
    assert would["train"].endswith(" -m torch.distributed.run --standalone --nproc_per_node=1 train_gpt.py")
    assert "--max-train-s 300" in steps["check"]["command"] and "--require-8xh100" not in steps["check"]["command"]
    md = (out / "summary.md").read_text()
    for command in would.values():
        assert f"would run: `{command}`" in md
        assert f"would run: {command}" in run.stdout or f"would run (full, needs CUDA): {command}" in run.stdout
    assert md.strip() in run.stdout  # the table is printed at the end

    # real numbers from the steps that ran
    bench, ev, train = (summary["results"][k] for k in ("bench", "bench_eval", "train"))
    assert bench["hardware"] == "cpu" and bench["shape"]["model_dim"] == 64
    for name in ("ngpt", "standard"):
        assert bench[name]["ms_median"] > 0 and bench[name]["warmup_s"] > 0 and bench[name]["mfu"] is None
    assert bench["ratio_ngpt_over_standard"] == pytest.approx(bench["ngpt"]["ms_median"] / bench["standard"]["ms_median"])
    assert ev["tokens_per_s"] > 0 and ev["projected_s"] == pytest.approx(63_779_840 / (8 * ev["tokens_per_s"]))
    assert train["steps"] == train["iterations"] == 8 and train["train_time_ms"] > 0 and train["warmup_s"] > 0
    assert train["peak_memory"].startswith("maxrss:")
    pre, post, final = train["pre_quant"]["val_bpb"], train["roundtrip_plain"]["val_bpb"], train["final_exact"]["val_bpb"]
    assert all(math.isfinite(v) and 0 < v < 10 for v in (pre, post, final))
    assert train["quant_gap_bpb"] == pytest.approx(post - pre, abs=2e-4)
    sizes = train["submission_bytes"]
    assert sizes["code"] == (out / "train" / "train_gpt.py").stat().st_size == (REPO / "train_gpt.py").stat().st_size
    assert sizes["model"] == (out / "train" / "final_model.ptz").stat().st_size
    assert summary["results"]["check"] == {"passed": True, "exit": 0, "violations": []}
    assert summary["train_log"] == str(out / "train" / "logs" / "gpu_check.txt")

    rows = {r["metric"]: r for r in summary["table"]}
    assert rows["GPU tests"]["value"] == "would run"
    assert rows["MFU nGPT"]["value"] == "n/a on CPU" and rows["check.py"]["value"] == "PASS"
    for metric in ("ms/step nGPT", "ms/step standard", "ratio nGPT/standard", "eval tokens/s (1 device)",
                   "train steps", "peak memory", "val_bpb pre-quant", "quant gap bpb", "artifact bytes", "eval time"):
        assert rows[metric]["value"] != "n/a" and "tiny CPU stand-in" in rows[metric]["from"], rows[metric]
        assert f"| {metric} | {rows[metric]['value']} |" in md
    assert rows["final val_bpb (sliding window, the score)"]["value"] == f"{final:.8f}"


def test_dry_run_time(dry_run):
    assert dry_run.seconds < 120  # about 40 s on 2 busy cores


@pytest.mark.parametrize("case", ["no_data", "no_shards", "no_tokenizer", "out_not_empty", "train_seconds",
                                  "budget", "missing_required"])
def test_bad_arguments_give_one_line(case, tiny_shards, tmp_path):
    out = tmp_path / "out"
    args = {"no_data": ["--data", tmp_path / "nope", "--tokenizer", tiny_shards.tokenizer_path, "--out", out],
            "no_shards": ["--data", tmp_path, "--tokenizer", tiny_shards.tokenizer_path, "--out", out],
            "no_tokenizer": ["--data", tiny_shards.data_path, "--tokenizer", tmp_path / "nope.model", "--out", out],
            "out_not_empty": [*data_args(tiny_shards), "--out", out],
            "train_seconds": [*data_args(tiny_shards), "--out", out, "--train-seconds", "0"],
            "budget": [*data_args(tiny_shards), "--out", out, "--train-seconds", "500", "--dry-run"],
            "missing_required": ["--data", tiny_shards.data_path, "--out", out]}[case]
    reason = {"no_data": "is not a folder", "no_shards": "has no fineweb_train_*.bin", "no_tokenizer": "is not a file",
              "out_not_empty": "refusing to overwrite", "train_seconds": "--train-seconds 0 must be",
              "budget": "cannot hold", "missing_required": "--tokenizer"}[case]
    if case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    run = cli(*args, "--dry-run", timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.py: error:") and reason in lines[0], run.stderr
    if case == "out_not_empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()


def test_full_run_needs_cuda(tiny_shards, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    run = cli(*data_args(tiny_shards), "--out", tmp_path / "out", timeout=120)
    assert run.returncode == 2 and run.stderr.strip() == "gpu_check.py: error: CUDA is not available; on a CPU " \
                                                         "machine use --dry-run"
    assert not (tmp_path / "out").exists()


def test_help():
    run = cli("--help", timeout=60)
    assert run.returncode == 0
    for flag in ("--data", "--tokenizer", "--out", "--train-seconds", "--dry-run", "--budget-s"):
        assert flag in run.stdout
    assert "python -m pytest -q -m gpu" in run.stdout


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_runner_reports_failures_and_keeps_going(tmp_path):
    def step(name, cmd, **kw):
        return Step(name, name, cmd, tmp_path, stdout=tmp_path / f"{name}.out", stderr=tmp_path / f"{name}.err", **kw)
    steps = [step("fails", py("import sys; print('partial'); sys.exit(3)")),
             step("slow", py("import time; print('start', flush=True); time.sleep(60)"), cap_s=3),
             step("works", py("print('model_params:1'); print('done')"), markers=("model_params:",)),
             step("needs", py("print('never')"), requires=tmp_path / "absent.txt"),
             Step("gpu_only", "gpu_only", None, tmp_path, would_run="nvidia-smi")]
    steps.append(step("last", py("print('last')")))
    t0 = time.monotonic()
    run_steps(steps, budget_s=60, echo=lambda _: None)
    assert time.monotonic() - t0 < 40
    got = {s.name: s for s in steps}
    assert (got["fails"].status, got["fails"].rc) == ("failed", 3)
    assert got["fails"].stdout.read_text() == "partial\n"
    assert got["slow"].status == "timeout" and got["slow"].timeout_s == 3 and got["slow"].stdout.read_text() == "start\n"
    assert got["works"].status == "ok" and "model_params:" in got["works"].marks
    assert got["needs"].status == "not run" and "absent.txt missing" in got["needs"].note
    assert got["works"].timeout_s < 60  # what was left of the budget
    assert got["gpu_only"].status == "would run" and not got["gpu_only"].failed
    assert got["last"].status == "ok"
    reason = failure_reason(steps)
    assert "\n" not in reason and reason.startswith("3 of 6 steps failed: ")
    assert "fails (exit 3)" in reason and "slow (timeout after 3 s)" in reason and "needs (not run: " in reason
    assert "works" not in reason and "last" not in reason and "gpu_only" not in reason


def test_runner_starves_a_step_when_later_reservations_fill_the_budget(tmp_path):
    steps = [Step("early", "early", py("print('x')"), tmp_path, stdout=tmp_path / "e.out", stderr=tmp_path / "e.err"),
             Step("big", "big", py("print('y')"), tmp_path, reserve_s=58, stdout=tmp_path / "b.out",
                  stderr=tmp_path / "b.err")]
    run_steps(steps, budget_s=60, echo=lambda _: None)
    assert steps[0].status == "not run" and "--budget-s left" in steps[0].note and not steps[0].stdout.exists()
    assert steps[1].status == "ok"
    assert failure_reason(steps) == "1 of 2 steps failed: early (not run: only 2 s of --budget-s left for it)"


def test_gpu_marked_tests_are_found_without_importing():
    assert "tests/test_bench.py::test_default_shape_on_gpu" in gpu_check.gpu_marked_tests()
    assert "tests/test_gpu_check.py::test_full_run_on_gpu" in gpu_check.gpu_marked_tests()


@pytest.mark.gpu
@pytest.mark.skipif(bool(os.environ.get(gpu_check.INNER_ENV)), reason="already running inside tools/gpu_check.py")
def test_full_run_on_gpu(tiny_shards, tmp_path):
    """The real mode end to end on a CUDA machine, at a tiny shape (hyperparameters from the environment reach bench.py
    and train_gpt.py) with a 20 s training cap. Inside gpu_check's own GPU-test step it skips (no recursion)."""
    tiny = {**gpu_check.TINY_TRAIN, "ITERATIONS": "200", "TRAIN_LOG_EVERY": "20"}
    run = cli(*data_args(tiny_shards), "--out", tmp_path / "out", "--train-seconds", "20", env=tiny, timeout=900)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert run.returncode == 0, (summary["reason"], run.stdout[-4000:])
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 5
    results = summary["results"]
    assert results["bench"]["hardware"] != "cpu" and results["bench"]["ngpt"]["mfu"] > 0
    assert results["bench_eval"]["projected_s"] > 0
    assert results["train"]["peak_memory"].startswith("allocated:") and results["train"]["train_time_ms"] <= 20_000
    assert results["check"]["passed"] and "passed" in results["gpu_tests"]["result"]


def test_failures_reach_the_summary_and_the_exit_status(tiny_shards, tmp_path, monkeypatch, capsys):
    """main() with stand-in commands: a failed bench, a bench_eval whose JSON is read, a train that writes no log;
    the summary says what failed and why, later steps still run, and the exit status is 1 with a one-line reason."""
    eval_json = json.dumps({"mode": "eval", "tokens_per_s": 1000.0, "projected_s": 7972.48, "gpus": 8,
                            "under_600s": False, "warmup_s": 0.5})

    def fake_plan(args):
        def step(name, code, **kw):
            return Step(name, name, py(code), tmp_path, stdout=args.out / f"{name}.stdout.txt",
                        stderr=args.out / f"{name}.stderr.txt", **kw)
        return [Step("gpu_tests", "gpu_tests", None, tmp_path, would_run="python -m pytest -q -m gpu"),
                step("bench", "import sys; print('not json'); sys.exit('bench.py: error: no CUDA')"),
                step("bench_eval", f"print({eval_json!r})"),
                step("train", "print('no log written')"),
                step("check", "print('never')", requires=args.out / "train" / "logs" / "gpu_check.txt")]
    monkeypatch.setattr(gpu_check, "plan", fake_plan)
    out = tmp_path / "out"
    assert gpu_check.main([*data_args(tiny_shards), "--out", str(out), "--dry-run"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check.py: error: 2 of 5 steps failed: bench (exit 1), check (not "
                                               "run: "), err
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"] and summary["reason"] in err[0]
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["bench"]["note"] == "bench.py: error: no CUDA" and steps["bench_eval"]["status"] == "ok"
    assert steps["train"]["status"] == "ok" and steps["check"]["status"] == "not run"
    rows = {r["metric"]: r["value"] for r in summary["table"]}
    assert rows["ms/step nGPT"] == "n/a" and rows["eval tokens/s (1 device)"] == "1,000"
    assert rows["eval projected full val split on 8 GPUs"] == "7972.5 s (under 600 s: False)"
    assert rows["final val_bpb (sliding window, the score)"] == "n/a" and rows["check.py"] == "n/a"
    md = (out / "summary.md").read_text()
    assert "| 2 | bench | exit 1: bench.py: error: no CUDA |" in md and "result: FAIL: 2 of 5 steps failed" in md
    assert md.strip() in captured.out


def test_result_readers(tmp_path):
    path = tmp_path / "stdout.txt"
    path.write_text('shape line\n{"a": 1}\n\n')
    assert gpu_check.last_json(path) == {"a": 1}
    path.write_text('{"a": 1}\ntrailing text\n')
    assert gpu_check.last_json(path) is None and gpu_check.last_json(tmp_path / "absent") is None
    path.write_text("..s\n1 passed, 1 skipped in 85.21s (0:01:25)\n")
    assert gpu_check.pytest_result(path) == "1 passed, 1 skipped in 85.21s (0:01:25)"
    path.write_text("F\n=========== 1 failed, 1 deselected in 3.10s ===========\n")
    assert gpu_check.pytest_result(path) == "1 failed, 1 deselected in 3.10s"


def test_full_run_plan(tmp_path, monkeypatch):
    """The commands a full run executes: the issue's exact commands, the training cap shared with check.py, time kept
    for train and check while the first three steps share the rest of the budget."""
    args = SimpleNamespace(out=tmp_path / "out", data=tmp_path / "data", tokenizer=tmp_path / "tok.model",
                           vocab_size=1024, train_seconds=300.0, train_overhead_s=120.0, check_reserve_s=15.0,
                           step_cap_s=180.0, dry_run=False)
    monkeypatch.delenv("WARMDOWN_ITERS", raising=False)
    monkeypatch.setenv("MUON_MOMENTUM_WARMUP_STEPS", "77")  # the environment wins over the short-run schedule
    steps = gpu_check.plan(args)
    py_ = sys.executable
    assert [s.name for s in steps] == ["gpu_tests", "bench", "bench_eval", "train", "check"]
    assert [s.cmd for s in steps[:3]] == [[py_, "-m", "pytest", "-q", "-m", "gpu"], [py_, "tools/bench.py"],
                                          [py_, "tools/bench.py", "--mode", "eval"]]
    assert all(s.cwd == REPO and s.env == {} and s.cap_s == 180 and s.reserve_s == 0 for s in steps[:3])
    train, check = steps[3], steps[4]
    assert train.cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"]
    assert train.cwd == args.out / "train" and train.env == {
        "WARMDOWN_ITERS": gpu_check.SHORT_SCHEDULE["WARMDOWN_ITERS"], "MUON_MOMENTUM_WARMUP_STEPS": "77",
        "MAX_WALLCLOCK_SECONDS": "300", "DATA_PATH": str(args.data), "TOKENIZER_PATH": str(args.tokenizer),
        "VOCAB_SIZE": "1024", "RUN_ID": "gpu_check"}
    assert train.reserve_s == train.cap_s == 420 and check.reserve_s == 15
    log = args.out / "train" / "logs" / "gpu_check.txt"
    assert check.requires == log and check.cmd[1:] == [
        "tools/check.py", str(log), "--script", str(args.out / "train" / "train_gpt.py"),
        "--ptz", str(args.out / "train" / "final_model.ptz"), "--max-train-s", "300"]
    assert all(s.would_run is None and s.stdout.parent == args.out for s in steps)
    assert [s.stdout.name for s in steps] == ["01_gpu_tests.stdout.txt", "02_bench.stdout.txt",
                                              "03_bench_eval.stdout.txt", "04_train.stdout.txt", "05_check.stdout.txt"]
