"""tools/gpu_check.py on the CPU: each call's dry run end to end on the tiny shards (the very steps of the device's plan,
the train step at tools/tiny.py's TINY_TRAIN, the wheels checked for Python 3.12), the plans and budgets against the
docstring's arithmetic, the README's device calls and every path they read, --prepare, a failing step, argument
errors, the timeout kill, and the summary's rows read from a synthetic log."""
import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

import train_gpt
from _logs import FAKE_SOURCE, REPO, SEPARATOR
from tools import gpu_check
from tools.gpu_check import CALLS, Step, collect, plan, run_steps, table
from tools.runlog import parse_log
from tools.tiny import TINY_TRAIN

GPU_CHECK = [sys.executable, str(REPO / "tools" / "gpu_check.py")]
CPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
TRAIN_ROWS = ["hardware", "FlashAttention 3", "final score (TTT: final_ttt_roundtrip val_bpb)",
              "quant gap (quant_gap_bpb)", "step_avg", "training compile + warm-up steps (warmup_time)",
              "training time (calibration included)", "calibration time", "export time (export_time)",
              "TTT warm-up: compiles on random tokens (ttt_warmup_time)",
              "TTT rates per rank (ttt_rates)", "TTT gain (gain_bpb)", "TTT time per token",
              "TTT full split on 8 devices like this (8x H100 projection)", "TTT deadline (ttt_deadline)",
              "TTT n-gram tilt: hints, their time (ttt_tilt)", "artifact bytes", "evaluation time (eval_phase_time)", "graphs compiled inside the clocks",
              "train step outside the log's timers (start, last validation, exit)", "peak memory train",
              "peak memory calibration", "peak memory eval", "peak memory ttt", "GPTQ fallbacks (gptq_fallback)",
              "check.py"]


def make_wheel(folder: Path, tag: str = "py3-none-any") -> Path:
    """A minimal wheel of a package `fake_dep` (pip installs it; its tag says which Pythons may)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fake_dep-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fake_dep/__init__.py", "VALUE = 1\n")
        z.writestr("fake_dep-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fake-dep\nVersion: 1.0\n")
        z.writestr("fake_dep-1.0.dist-info/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   f"Tag: {tag}\n")
        z.writestr("fake_dep-1.0.dist-info/RECORD", "")
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder)
    return folder


def data_args(shards):
    return ["--data", shards.data_path, "--tokenizer", shards.tokenizer_path]


def device_args(call, shards, wheels, out):
    """The namespace of the device's full run (no CUDA looked for: a full plan needs none to be planned)."""
    args = gpu_check.arguments(["--call", str(call), *data_args(shards), "--wheels", str(wheels), "--out", str(out)])
    args.vocab_size = shards.vocab_size
    return args


@pytest.fixture(scope="module")
def dry_runs(tiny_shards, wheels, tmp_path_factory):
    """Both calls' dry runs, side by side (each runs its steps one after another): call -> namespace."""
    def dry_run(call):
        base = tmp_path_factory.mktemp(f"gpu_check_call{call}")
        out, results = base / "out", base / "results"
        t0 = time.perf_counter()
        run = subprocess.run(GPU_CHECK + ["--call", str(call), *data_args(tiny_shards), "--wheels", str(wheels),
                                          "--out", str(out), "--results", str(results), "--dry-run"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
                             cwd=REPO)
        seconds = time.perf_counter() - t0
        path = out / f"call{call}" / "summary.json"
        return SimpleNamespace(call=call, run=run, out=out, results=results, dir=path.parent, seconds=seconds,
                               summary=json.loads(path.read_text()) if path.exists() else None)
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip((1, 2), pool.map(dry_run, (1, 2))))
    print(", ".join(f"gpu_check --call {c} --dry-run took {r.seconds:.1f}s" for c, r in runs.items()))
    return runs


@pytest.mark.parametrize("call", [1, 2])
def test_dry_run_of_each_call(call, dry_runs, tiny_shards, wheels, monkeypatch):
    dry_run = dry_runs[call]
    run, s = dry_run.run, dry_run.summary
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert s["ok"] and s["reason"] is None and s["call"] == call and s["dry_run"]
    names = ["wheels", "train", "check", "gpu_tests"] if call == 1 else ["wheels", "train", "check"]
    assert [st["name"] for st in s["steps"]] == names and all(st["status"] == "ok" for st in s["steps"])
    assert all((dry_run.dir / st["stdout"]).is_file() and (dry_run.dir / st["stderr"]).is_file() for st in s["steps"])

    # the dry run's steps are the device's under the tiny environment, the would-run lines the device's commands
    for key in ("WARMDOWN_ITERS", "MUON_MOMENTUM_WARMUP_STEPS", "EVAL_BUDGET_SECONDS", "PYTHONPATH"):
        monkeypatch.delenv(key, raising=False)
    full = plan(device_args(call, tiny_shards, wheels, dry_run.out))
    for got, want in zip(s["steps"], full, strict=True):
        assert got["would_run"] == want.line() and got["would_run"] in run.stdout
        assert got["cmd"] == [str(c) for c in want.cmd + gpu_check.dry_args(want.name)]
        assert got["env"] == {**want.env, **(TINY_TRAIN if want.name == "train" else {}), **CPU}
        assert got["cwd"] == str(want.cwd) and got["budget_s"] == CALLS[call].step_s(want.name)
    would = {st["name"]: st["would_run"] for st in s["steps"]}
    settings = {**CALLS[call].env, "MAX_WALLCLOCK_SECONDS": f"{CALLS[call].train_s:g}"}
    assert all(f" {k}={v} " in would["train"] for k, v in settings.items()), would["train"]
    assert would["train"].endswith(" -m torch.distributed.run --standalone --nproc_per_node=1 train_gpt.py")
    assert would["check"].endswith(f" --max-train-s {CALLS[call].train_s:g}")
    if call == 1:
        assert would["gpu_tests"].endswith(" -m pytest -q -m gpu -o addopts= tests/test_gpu.py")
    assert f"On the device: `{gpu_check.device_command(call)}`" in run.stdout
    assert s["device_command"] == gpu_check.device_command(call)

    # the summary: printed at the end, written, its rows filled from the tiny run's log
    md = (dry_run.dir / "summary.md").read_text()
    assert md.strip() in run.stdout and "dry run (CPU, tiny configuration" in md
    rows = {r["metric"]: r["value"] for r in s["table"]}
    for name in TRAIN_ROWS:
        assert name in rows and not rows[name].startswith("n/a") and f"| {name} | " in md, (name, rows.get(name))
    log = parse_log(dry_run.dir / "train" / "logs" / f"gpu_check_call{call}.txt")
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == f"{log['ttt_score']['val_bpb']:.8f}"
    assert log["ttt_score"]["val_bpb"] == log["final_exact"]["val_bpb"]  # TTT's is the score check.py checks
    assert rows["plain score (no sliding window: final_roundtrip_plain)"] == f"{log['roundtrip_plain']['val_bpb']:.4f}"
    assert rows["graphs compiled inside the clocks"] == "training 0, evaluation 0"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "0" and rows["check.py"] == "PASS"
    assert rows["peak memory ttt"].startswith("maxrss ") and rows["peak memory ttt"].endswith(" MiB")
    assert float(log["hparams"]["EVAL_BUDGET_SECONDS"]) == float(CALLS[call].env["EVAL_BUDGET_SECONDS"])
    ptz = dry_run.dir / "train" / "final_model.ptz"
    assert s["results"]["train"]["submission_bytes"]["model"] == ptz.stat().st_size
    if call == 1:
        assert log["hparams"]["TTT_PHASES"] == "1" and rows["TTT deadline (ttt_deadline)"].startswith("struck at ")
        assert re.match(r"\d+ tests collected", rows["GPU tests"]), rows["GPU tests"]
        assert "tests/test_gpu.py::test_ttt_graphs_at_default_dims_with_tokens_on_the_gpu" in rows["GPU tests"]
        assert "test_bench" not in rows["GPU tests"]
    # --results: what the device returns (at most 8 files), the call's folder without weights
    assert sorted(p.name for p in dry_run.results.iterdir()) == [f"call{call}.tgz", "summary.json", "summary.md"]
    assert (dry_run.results / "summary.md").read_text() == md
    with tarfile.open(dry_run.results / f"call{call}.tgz") as tar:
        members = tar.getnames()
    assert f"call{call}/train/logs/gpu_check_call{call}.txt" in members and f"call{call}/01_wheels.stdout.txt" in members
    assert not [m for m in members if m.endswith((".pt", ".ptz"))]


def test_device_plans(tmp_path, tiny_shards, wheels, monkeypatch):
    """Each call's steps on the device: the train step's settings (the environment wins, but not over the wall
    clock), the short schedule scaled to the training time, the wheels on every step's path, the budgets."""
    for key in ("WARMDOWN_ITERS", "EVAL_BUDGET_SECONDS", "PYTHONPATH", "NUM_LAYERS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MUON_MOMENTUM_WARMUP_STEPS", "77")
    py = sys.executable
    for call, seconds, warmdown in ((1, "15", "12"), (2, "45", "38")):
        args = device_args(call, tiny_shards, wheels, tmp_path)
        steps = plan(args)
        by = {s.name: s for s in steps}
        assert list(by) == (["wheels", "train", "check", "gpu_tests"] if call == 1 else ["wheels", "train", "check"])
        site = tmp_path.resolve() / f"call{call}" / "site"
        assert by["wheels"].cmd == [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                    "--no-cache-dir", "--upgrade", "--target", str(site),
                                    str(wheels.resolve() / "fake_dep-1.0-py3-none-any.whl")]
        path = {"PYTHONPATH": str(site)}
        train, check, work = by["train"], by["check"], tmp_path.resolve() / f"call{call}" / "train"
        assert train.cmd == [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt.py"]
        assert train.cwd == work and train.env == {
            "WARMDOWN_ITERS": warmdown, "MUON_MOMENTUM_WARMUP_STEPS": "77", **CALLS[call].env,
            "MAX_WALLCLOCK_SECONDS": seconds, "DATA_PATH": str(Path(tiny_shards.data_path).resolve()),
            "TOKENIZER_PATH": str(Path(tiny_shards.tokenizer_path).resolve()),
            "VOCAB_SIZE": str(tiny_shards.vocab_size), "RUN_ID": f"gpu_check_call{call}", **path}
        assert check.cmd == [py, "tools/check.py", str(work / "logs" / f"gpu_check_call{call}.txt"), "--script",
                             str(work / "train_gpt.py"), "--ptz", str(work / "final_model.ptz"),
                             "--max-train-s", seconds]
        assert check.env == path and all(s.would_run is None for s in steps)
        if call == 1:
            assert by["gpu_tests"].cmd == [py, "-m", "pytest", "-q", "-m", "gpu", "-o", "addopts=", "tests/test_gpu.py"]
            assert by["gpu_tests"].env == path and by["gpu_tests"].cwd == REPO
        assert [s.budget_s for s in steps] == [CALLS[call].step_s(s.name) for s in steps]
        assert [s.stdout.name for s in steps][-1] == f"{len(steps):02d}_{steps[-1].name}.stdout.txt"
    monkeypatch.setenv("EVAL_BUDGET_SECONDS", "99")
    monkeypatch.setenv("MAX_WALLCLOCK_SECONDS", "600")
    env = plan(device_args(1, tiny_shards, wheels, tmp_path))[1].env
    assert (env["EVAL_BUDGET_SECONDS"], env["MAX_WALLCLOCK_SECONDS"]) == ("99", "15")


def test_budgets_are_the_docstrings_arithmetic():
    """The docstring's arithmetic is the code's; each budget holds its parts, the train step's parts are the call's
    settings at the shape it runs, and both calls with one machine start leave at least 4 of the 15 minutes."""
    doc = gpu_check.__doc__
    assert gpu_check.budget_text() in doc
    for n, call in CALLS.items():
        assert f"<= {call.budget_s()} s (device timeout_s {call.timeout_s()})" in doc
        assert call.total_s() <= call.budget_s() < call.total_s() + 5
        assert call.timeout_s() == call.budget_s() + gpu_check.DEVICE_SLACK_S
        assert call.keyed_s("training") == call.train_s
        assert call.keyed_s("evaluation") > float(call.env["EVAL_BUDGET_SECONDS"])
        layers = int(call.env.get("NUM_LAYERS", train_gpt.HPARAMS["NUM_LAYERS"]))
        phases = int(call.env.get("TTT_PHASES", train_gpt.HPARAMS["TTT_PHASES"]))
        front = gpu_check.FRONT_END_S
        assert call.keyed_s("train_compile") == gpu_check.INDUCTOR_FACTOR * front["train", layers]
        assert call.keyed_s("ttt_warmup") >= gpu_check.INDUCTOR_FACTOR * front["ttt_phases" if phases else "ttt", layers]
    assert CALLS[1].env["NUM_LAYERS"] == "2" and train_gpt.HPARAMS["NUM_LAYERS"] == 12
    test_gpu = (REPO / "tests" / "test_gpu.py").read_text()
    assert re.search(r'^LAYERS = "2"$', test_gpu, re.M)  # the GPU tests' budget is for 2 layers
    assert CALLS[1].budget_s() <= 240 and CALLS[2].budget_s() <= 360 and CALLS[2].keyed_s("spare") >= 60
    used = gpu_check.MACHINE_START_S + sum(call.timeout_s() for call in CALLS.values())
    assert gpu_check.DEVICE_S - used >= gpu_check.RERUN_S == 240


def python_imports(path: Path) -> set[Path]:
    """The repository's modules that a Python file imports (pytest.ini puts . and tools/ on the path; tests/ holds the
    conftest and its helpers), and theirs."""
    found, todo = set(), [path]
    while todo:
        tree = ast.parse(todo.pop().read_text(encoding="utf-8"))
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        for name in names:
            parts = name.split(".")
            for folder in (REPO, REPO / "tools", REPO / "tests"):
                module = folder.joinpath(*parts).with_suffix(".py")
                if module.is_file() and module not in found:
                    found.add(module)
                    todo.append(module)
    return found


def device_call(command: str) -> tuple[list[str], list[str]]:
    """(carry, gpu_check's arguments) of a device tool call as README.md gives it."""
    m = re.fullmatch(r"run\(timeout_s=\d+, carry=(\[.*?\]), command=\"(.*)\"\)", command)
    words = shlex.split(m.group(2).replace("$(mktemp -d)", "/tmp/out").replace("$OUT", "/tmp/results"))
    assert words[:2] == ["python3", "tools/gpu_check.py"], words
    return ast.literal_eval(m.group(1)), words[2:]


def test_readme_device_calls_carry_every_path_they_read(tiny_shards, monkeypatch):
    """README.md holds the dry run's device calls exactly and --prepare's command; what each call reads (its data,
    tokenizer and wheels, the scripts its steps run, pytest's configuration, and every repository module they import)
    is tracked by git or inside a carried folder, and the carried folders are git-ignored (a CPU checkout in CI runs
    the same steps from the tracked files alone: the dry runs above)."""
    monkeypatch.chdir(REPO)  # the device runs the command in the repository root
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert ("python tools/gpu_check.py --prepare --data ./data/datasets/fineweb10B_sp1024 --tokenizer "
            "./data/tokenizers/fineweb_1024_bpe.model") in lines
    for cmd in gpu_check.prepare_commands("./data/datasets/fineweb10B_sp1024",
                                          "./data/tokenizers/fineweb_1024_bpe.model", python="python"):
        assert "  " + shlex.join(cmd) + "\n" in gpu_check.__doc__
    try:
        tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                     check=True).stdout.splitlines())
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for n in CALLS:
        command = gpu_check.device_command(n)
        assert command in lines
        carry, argv = device_call(command)
        assert carry == list(gpu_check.CARRY)
        args = gpu_check.arguments(argv)
        args.vocab_size = tiny_shards.vocab_size
        steps = plan(args)
        reads = {REPO / "tools" / "gpu_check.py", REPO / "train_gpt.py", REPO / "pytest.ini",
                 REPO / "tests" / "conftest.py", args.data, args.tokenizer, args.wheels}
        for step in steps:
            for word in [str(w) for w in step.cmd] + list(step.env.values()):
                path = Path(word) if Path(word).is_absolute() else REPO / word
                if path.exists() and path.is_relative_to(REPO) and path != REPO:
                    reads.add(path)
        assert REPO / "tools" / "check.py" in reads and (n == 2 or REPO / "tests" / "test_gpu.py" in reads)
        for script in [p for p in reads if p.suffix == ".py"]:
            reads |= python_imports(script)
        assert {REPO / "tools" / "runlog.py", REPO / "tools" / "tiny.py", REPO / "tools" / "data.py"} <= reads
        for path in reads:
            rel = path.relative_to(REPO)
            assert rel.as_posix() in tracked or rel.parts[0] in carry, f"call {n} reads {rel}: neither tracked nor carried"
    for folder in gpu_check.CARRY:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/"], cwd=REPO)
        assert ignored.returncode == 0, f"{folder}/ is not git-ignored: it would travel without carry"


def test_prepare_writes_what_the_device_call_carries(tiny_shards, tmp_path, monkeypatch, capsys):
    """--prepare in a stand-in repository root: the shards' head and the tokenizer, which a call then reads by
    default, and the wheels; a second --prepare refuses to overwrite them."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "tools").symlink_to(REPO / "tools")
    monkeypatch.setattr(gpu_check, "ROOT", root)
    monkeypatch.setattr(gpu_check, "VAL_TOKENS", 2000)
    monkeypatch.setattr(gpu_check, "TRAIN_TOKENS", 20000)
    monkeypatch.setattr(gpu_check, "WHEELS", [str(make_wheel(tmp_path / "src"))])
    argv = ["--prepare", *data_args(tiny_shards)]
    assert gpu_check.main(argv) == 0
    data = root / gpu_check.DATA_DIR
    assert sorted(p.name for p in data.iterdir()) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin",
                                                      "tokenizer.model"]
    assert [p.name for p in (root / ".whl").iterdir()] == ["fake_dep-1.0-py3-none-any.whl"]
    assert (data / "fineweb_train_000000.bin").stat().st_size == 1024 + 2 * 20000
    args = gpu_check.arguments(["--call", "1", "--out", str(tmp_path / "out")])
    assert (args.data, args.tokenizer) == (data, data / "tokenizer.model")
    assert gpu_check.data_problem(args.data) is None and gpu_check.tokenizer_problem(args.tokenizer) is None
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        gpu_check.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "refusing to overwrite" in err[0]


def test_a_wheel_for_another_python_fails_the_dry_run(tiny_shards, tmp_path):
    """The dry run's wheels step asks pip whether the wheels install on the device's Python 3.12 on x86-64."""
    for tag, ok in (("cp311-cp311-manylinux_2_17_x86_64", False), ("cp312-cp312-manylinux_2_17_x86_64", True)):
        folder = tmp_path / tag
        make_wheel(folder, tag)
        args = gpu_check.arguments(["--call", "2", *data_args(tiny_shards), "--wheels", str(folder), "--out",
                                    str(tmp_path / f"out_{tag}"), "--dry-run"])
        args.vocab_size = tiny_shards.vocab_size
        args.dir.mkdir(parents=True)
        step = plan(args)[0]
        assert step.name == "wheels"
        reason = run_steps([step], 60, echo=print)
        assert (reason is None) == ok, reason
        assert ok or "is not a supported wheel on this platform" in reason
        assert not args.site.exists()  # a dry run installs nothing


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failing_step_gives_exit_1_and_a_one_line_reason(tiny_shards, tmp_path, monkeypatch, capsys):
    """main() with stand-in steps: the train step fails, the later steps still run, no log is written (the summary
    says n/a), and the exit status is 1 with the failure on one line."""
    def fake_plan(args):
        steps = [Step("train", py("import sys; print('no log'); sys.exit('train_gpt.py: error: no CUDA')"), tmp_path),
                 Step("check", py("print('ok')"), tmp_path), Step("gpu_tests", py("print('1 passed in 1.00s')"),
                                                                   tmp_path)]
        for s in steps:
            s.stdout, s.stderr = args.dir / f"{s.name}.out", args.dir / f"{s.name}.err"
        return steps
    monkeypatch.setattr(gpu_check, "plan", fake_plan)
    out = tmp_path / "out"
    assert gpu_check.main(["--call", "1", *data_args(tiny_shards), "--out", str(out), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check.py: error: 1 of 3 steps failed: train (exit 1: train_gpt.py:"
                                               " error: no CUDA); see "), err
    s = json.loads((out / "call1" / "summary.json").read_text())
    assert not s["ok"] and [st["status"] for st in s["steps"]] == ["failed", "ok", "ok"]
    rows = {r["metric"]: r["value"] for r in s["table"]}
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "n/a" and rows["GPU tests"] == "1 passed in 1.00s"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "n/a"
    assert "| 1 | train | exit 1: train_gpt.py: error: no CUDA |" in (out / "call1" / "summary.md").read_text()


def test_timeout_kills_the_process_group_and_later_steps_still_run(tmp_path):
    child = ("import subprocess, sys, time\n"
             "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n")
    # 54 s of the 60 kept for the last step: the slow one gets the 6 s left, the one after it none (not run)
    steps = [Step("fails", py("import sys; print('error: boom', file=sys.stderr); sys.exit(3)"), tmp_path),
             Step("slow", py(child + "print(c.pid, flush=True); time.sleep(60)"), tmp_path),
             Step("starved", py("print('x')"), tmp_path), Step("last", py("print('last')"), tmp_path, budget_s=54)]
    for s in steps:
        s.stdout, s.stderr = tmp_path / f"{s.name}.out", tmp_path / f"{s.name}.err"
    t0 = time.monotonic()
    reason = run_steps(steps, budget_s=60, echo=print)
    assert time.monotonic() - t0 < 40
    fails, slow, starved, last = steps
    assert slow.status == "timeout" and 5 < slow.timeout_s <= 6 and re.match(r"timeout after [56] s: ", slow.outcome())
    pid = int(slow.stdout.read_text())
    time.sleep(0.5)
    state = (open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}/stat") else "gone")
    assert state in ("gone", "Z"), state  # the grandchild went with its group
    assert (fails.status, fails.rc, fails.note) == ("failed", 3, "error: boom")
    assert starved.status == "not run" and "of --budget-s left" in starved.note and not starved.stdout.exists()
    assert last.status == "ok" and last.stdout.read_text() == "last\n"
    assert "\n" not in reason and re.match(r"3 of 4 steps failed: fails \(exit 3: error: boom\), slow \(timeout "
                                           rf"after [56] s: {pid}\), starved \(not run: only ", reason), reason


def test_a_step_keeps_its_own_budget_when_the_call_started_late(tmp_path):
    """The first step's budget holds though the later ones leave it less (the call's start ran long): the last step
    takes the loss; a step never gets more than the call has left."""
    steps = [Step("first", py("pass"), tmp_path, budget_s=10), Step("last", py("pass"), tmp_path, budget_s=50)]
    for s in steps:
        s.stdout, s.stderr = tmp_path / f"{s.name}.out", tmp_path / f"{s.name}.err"
    assert run_steps(steps, budget_s=55, echo=print) is None
    assert steps[0].timeout_s == 10 and 50 < steps[1].timeout_s < 55  # 10, not 55 - 50; the last: what is left
    assert gpu_check.step_limit(steps[1], left_s=45, later_s=0) == 45  # under its budget when the first took its 10


@pytest.mark.parametrize("case", ["no_call", "bad_call", "no_out", "no_data", "no_shards", "no_tokenizer",
                                  "bad_tokenizer", "out_not_empty", "results_not_empty", "no_wheels", "budget",
                                  "prepare_with_call", "prepare_without_data"])
def test_bad_arguments_exit_2_with_one_line(case, tiny_shards, tmp_path, capsys):
    out, results, base = tmp_path / "out", tmp_path / "results", ["--call", "1", *data_args(tiny_shards), "--dry-run"]
    (tmp_path / "junk.model").write_text("not a model")
    (tmp_path / "empty").mkdir()
    args = {"no_call": base[2:], "bad_call": ["--call", "3", *base[2:]], "no_out": base,
            "no_data": ["--call", "1", "--data", str(tmp_path / "nope"), *base[4:]],
            "no_shards": ["--call", "1", "--data", str(tmp_path), *base[4:]],
            "no_tokenizer": [*base[:4], "--tokenizer", str(tmp_path / "nope.model"), "--dry-run"],
            "bad_tokenizer": [*base[:4], "--tokenizer", str(tmp_path / "junk.model"), "--dry-run"],
            "out_not_empty": base, "results_not_empty": [*base, "--results", str(results)],
            "no_wheels": [*base, "--wheels", str(tmp_path / "empty")], "budget": [*base, "--budget-s", "30"],
            "prepare_with_call": ["--prepare", *base[:4]], "prepare_without_data": ["--prepare"]}[case]
    reason = {"no_call": "--call", "bad_call": "invalid choice", "no_out": "--out", "no_data": "is not a folder",
              "no_shards": "has no fineweb_train_*.bin", "no_tokenizer": "is not a file",
              "bad_tokenizer": "cannot be loaded", "out_not_empty": "refusing to overwrite",
              "results_not_empty": "already holds a summary of call 1", "no_wheels": "holds no .whl file",
              "budget": "cannot hold the 15 s", "prepare_with_call": "no --call",
              "prepare_without_data": "takes --data and --tokenizer"}[case]
    if case == "out_not_empty":
        (out / "call1").mkdir(parents=True)
        (out / "call1" / "keep.txt").write_text("mine")
    if case == "results_not_empty":
        results.mkdir()
        (results / "summary.md").write_text("mine")
    if case != "no_out":
        args = [*args, "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        gpu_check.main(args)
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
    assert run.returncode == 0 and "pytest -q -m gpu" in run.stdout and gpu_check.budget_text() in run.stdout
    for flag in ("--call", "--prepare", "--data", "--tokenizer", "--wheels", "--out", "--results", "--dry-run",
                 "--budget-s"):
        assert flag in run.stdout, flag


SYNTHETIC = """hardware:1x NVIDIA H200
world_size:1 grad_accum_steps:8 flash_attn_3:False
warmup_steps:2 done, weights and optimizer state restored warmup_time:31234ms (compiles + warm-up steps, before the clock)
step:40/20000 train_loss:5.1000 train_time:37000ms step_avg:925.00ms
train_phase_compiles:0
peak_memory phase:train allocated:40000MiB reserved:41000MiB
calibration method:gptq batches:4 tokens:3145728 time:1500ms train_time:38500ms
peak_memory phase:calibration allocated:42000MiB reserved:43000MiB
pre_quant val_loss:2.9000 val_bpb:1.1700
gptq_fallback:2 blocks.0.q:diag,blocks.3.up:damp
export method:gptq step:0.5xRMS model_bytes:15900000 bytes_per_param:0.3000 export_time:12345ms
submission_bytes code:20000 model:15900000 total:15920000 limit:16000000
ttt_warmup_time:60000ms (random tokens, before the evaluation clock)
ttt_rates chunk:128 adapted:123456 scored tokens/s, forward_only:654321 window tokens/s, forward_windows_per_token:1.85 per rank
artifact_load_time:250ms
final_roundtrip_plain val_loss:2.9100 val_bpb:1.1750 eval_time:900ms
quant_gap_bpb:0.0050
peak_memory phase:eval allocated:30000MiB reserved:31000MiB
final_ttt_roundtrip val_loss:2.8000 val_bpb:1.1300 eval_time:21000ms
final_ttt_roundtrip_exact val_loss:2.80001234 val_bpb:1.13004321
ttt gain_bpb:-0.0300 vs:plain docs:62 tokens:131071 time:21000ms full_split_8x_this_device:1237s
ttt_nonfinite_docs:0
ttt_tilt order:16 hints:4567 targets:131071 time:35ms
ttt_deadline docs_unadapted:12 at:20.1s forward_only_tokens:30000 longest_adapted_segment:3.5s first:1,2
peak_memory phase:ttt allocated:50000MiB reserved:52000MiB
eval_phase_time:24000ms
eval_phase_compiles:0
"""


def test_summary_rows_from_a_synthetic_log(tmp_path):
    """The rows of a call 2 run: the scores, the TTT rates, time per token, projection and deadline, every time
    against its budget (the train step's time outside the log's timers from the step's seconds), the peak memory per
    phase."""
    path = tmp_path / "log.txt"
    path.write_text(FAKE_SOURCE + "\n" + SEPARATOR + "\n" + SYNTHETIC)
    log = {k: v for k, v in parse_log(path).items() if k != "source"}
    res = {"gpu_tests": None, "train": log, "check": {"passed": True, "exit": 0, "violations": []},
           "seconds": {"train": 200.0}}
    rows = dict(table(res, CALLS[2]))
    assert rows["hardware"] == "1x NVIDIA H200" and rows["FlashAttention 3"] == "not in use (SDPA)"
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "1.13004321"
    assert rows["plain score (no sliding window: final_roundtrip_plain)"] == "1.1750"
    assert (rows["quant gap (quant_gap_bpb)"], rows["step_avg"]) == ("+0.0050", "925.00 ms (40 steps)")
    assert rows["training compile + warm-up steps (warmup_time)"] == "31.2 s (budgeted 28.7 s)"
    assert rows["training time (calibration included)"] == "38,500 ms" and rows["calibration time"] == "1,500 ms"
    assert rows["export time (export_time)"] == "12.3 s (budgeted 10.0 s)"
    assert rows["TTT warm-up: compiles on random tokens (ttt_warmup_time)"] == "60.0 s (budgeted 52.5 s)"
    assert rows["TTT rates per rank (ttt_rates)"] == ("chunk 128: adapted 123,456 scored tokens/s, forward only "
                                                      "654,321 window tokens/s")
    assert rows["TTT gain (gain_bpb)"] == "-0.0300 vs plain"
    assert rows["TTT time per token"] == ("160.2 us (21,000 ms for 131,071 tokens, 62 docs, 12 unadapted by the "
                                          "deadline)")
    assert rows["TTT full split on 8 devices like this (8x H100 projection)"] == "1237 s"
    assert rows["TTT deadline (ttt_deadline)"] == ("struck at 20.1 s: 12 docs forward only (30,000 tokens), longest "
                                                   "adapted segment 3.5 s")
    assert rows["TTT n-gram tilt: hints, their time (ttt_tilt)"] == "order 16: 4,567 of 131,071 targets hinted in 35 ms"
    assert rows["evaluation time (eval_phase_time)"] == "24.0 s (budgeted 28.0 s)"
    assert rows["graphs compiled inside the clocks"] == "training 0, evaluation 0"
    # 200 s less warm-up 31.234, training 38.5, export 12.345, TTT warm-up 60, evaluation 24
    assert rows["train step outside the log's timers (start, last validation, exit)"] == "33.9 s (budgeted 34.5 s)"
    assert rows["artifact bytes"] == "15,920,000 (code 20,000 + model 15,900,000; limit 16,000,000)"
    assert rows["peak memory train"] == "allocated 40,000 MiB, reserved 41,000 MiB"
    assert rows["peak memory ttt"] == "allocated 50,000 MiB, reserved 52,000 MiB"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "2" and rows["check.py"] == "PASS" and "GPU tests" not in rows

    path.write_text(SEPARATOR + "\nstep:8/8 train_loss:5.0 train_time:900ms step_avg:112.50ms\n"
                    "peak_memory maxrss:565MiB\nfinal_roundtrip_plain val_loss:5.1 val_bpb:3.2 eval_time:9ms\n")
    log = parse_log(path)
    rows = dict(table({"gpu_tests": None, "train": log, "check": None, "seconds": {}}, CALLS[1]))
    assert rows["peak memory train"] == "maxrss 565 MiB" and rows["peak memory ttt"] == "n/a"
    assert rows["TTT gain (gain_bpb)"] == rows["TTT deadline (ttt_deadline)"] == rows["TTT time per token"] == "n/a"
    assert rows["TTT warm-up: compiles on random tokens (ttt_warmup_time)"] == "n/a (budgeted 61.8 s)"
    assert rows["train step outside the log's timers (start, last validation, exit)"] == "n/a (budgeted 27.3 s)"
    assert rows["GPTQ fallbacks (gptq_fallback)"] == "0" and rows["check.py"] == "n/a"


def test_gpu_tests_row_names_the_failures(tmp_path):
    """pytest -q's final line and its FAILED lines (a run), or the node ids it collected (a dry run)."""
    step = Step("gpu_tests", ["true"], tmp_path)
    step.stdout, step.stderr = tmp_path / "out", tmp_path / "err"
    step.stdout.write_text("F..s\n=========================== short test summary info ============================\n"
                           "FAILED tests/test_gpu.py::test_ttt_graphs_at_default_dims_with_tokens_on_the_gpu - "
                           "RuntimeError: indices should be either on cpu\n"
                           "=============== 1 failed, 2 passed, 1 skipped in 85.21s (0:01:25) ===============\n")
    res = collect([step], tmp_path / "absent.txt")
    assert res["gpu_tests"]["summary"] == "1 failed, 2 passed, 1 skipped in 85.21s (0:01:25)"
    rows = dict(table({**res, "seconds": {}}, CALLS[1]))
    assert rows["GPU tests"] == ("1 failed, 2 passed, 1 skipped in 85.21s (0:01:25): FAILED tests/test_gpu.py::"
                                 "test_ttt_graphs_at_default_dims_with_tokens_on_the_gpu - RuntimeError: indices "
                                 "should be either on cpu")
    assert rows["final score (TTT: final_ttt_roundtrip val_bpb)"] == "n/a" and rows["check.py"] == "n/a"
