"""tools/ablate.py: one real tiny ablation (2 good variants + 1 that train_gpt.py rejects, x 2 seeds, 2 at a
time) checked against the runs' own logs; bad arguments refused in one line before anything runs."""
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy import stats

from tools.ablate import AblateError, parse_variant, plan, summarize
from tools.runlog import parse_log

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "ablate.py"
VARIANTS = ["base=", "lr=MATRIX_LR=0.02", "bad=NUM_KV_HEADS=3"]
SEEDS = [1, 2]
COMMON = ["ITERATIONS=8", "WARMUP_STEPS=0", "WARMDOWN_ITERS=4", "VAL_LOSS_EVERY=0", "TRAIN_LOG_EVERY=4",
          "EVAL_STRIDE=64", "TTT=0", "OMP_NUM_THREADS=1"]  # TTT off, as the protocols run
BAD_CONFIG = "NUM_HEADS=4 is not divisible by NUM_KV_HEADS=3"


def tool(*args, env=None, cwd=None, timeout=60):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, tiny_run_env):
    work = tmp_path_factory.mktemp("ablate")
    script = shutil.copy(ROOT / "train_gpt.py", work / "train_gpt.py")  # a fixed copy: the file may be edited meanwhile
    out = work / "runs"
    args = [a for v in VARIANTS for a in ("--variant", v)]
    t0 = time.perf_counter()
    proc = tool(*args, "--seeds", *SEEDS, "--env", *COMMON, "--out", out, "--jobs", 2, "--script", script,
                env=tiny_run_env, cwd=work, timeout=300)
    print(f"ablation: {time.perf_counter() - t0:.1f}s\n{proc.stdout}{proc.stderr}")
    report = json.loads((out / "ablate.json").read_text())
    logs = {r["run_id"]: parse_log(out / r["run_id"] / "logs" / f"{r['run_id']}.txt") for r in report["runs"] if r["ok"]}
    return proc, out, report, logs


def table_rows(stdout):
    """{variant: [cells]} from the summary table printed by the tool."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("|")]
        rows[cells[0]] = cells
    return rows


def test_exit_code_and_failure_line(ablation):
    proc, *_ = ablation
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "ablate: 2 of 6 runs failed"


def test_runs_are_seed_major_in_their_own_dirs(ablation):
    proc, out, report, logs = ablation
    starts = re.findall(r"(?m)^\[\d+/6\] (\S+) seed (\d+): start$", proc.stdout)
    expect = [(v.split("=")[0], str(s)) for s in SEEDS for v in VARIANTS]
    assert starts == expect
    assert [(r["variant"], str(r["seed"])) for r in report["runs"]] == expect
    for r in report["runs"]:
        run_dir = out / f"{r['variant']}_s{r['seed']}"
        assert r["run_id"] == run_dir.name and Path(r["dir"]) == run_dir
        assert (run_dir / "stdout.txt").is_file() and (run_dir / "stderr.txt").is_file()
        assert (run_dir / "final_model.ptz").is_file() == r["ok"]
        finished = re.search(rf"(?m)^\[\d+/6\] {r['variant']} seed {r['seed']}: \d+\.\ds (.*)$", proc.stdout).group(1)
        assert finished == (f"val_bpb {r['post_bpb']:.4f}" if r["ok"] else f"FAILED: {r['reason']}")


def test_run_numbers_match_logs(ablation):
    _, _, report, logs = ablation
    ok = [r for r in report["runs"] if r["ok"]]
    assert {r["variant"] for r in ok} == {"base", "lr"} and len(ok) == 4
    for r in ok:
        log = logs[r["run_id"]]
        assert log["hparams"]["SEED"] == str(r["seed"]) and log["hparams"]["RUN_ID"] == r["run_id"]
        assert log["hparams"]["ITERATIONS"] == "8" and log["hparams"]["EVAL_STRIDE"] == "64"
        assert log["hparams"]["MATRIX_LR"] == ("0.02" if r["variant"] == "lr" else "0.04")
        assert r["returncode"] == 0 and r["reason"] is None
        assert r["pre_bpb"] == log["pre_quant"]["val_bpb"]
        assert r["post_bpb"] == log["final_exact"]["val_bpb"]
        assert r["quant_gap"] == log["quant_gap_bpb"]
        assert r["steps"] == log["steps"] == 8
        assert r["step_avg_ms"] == log["step_avg_ms"] and r["seconds"] > 0
    base = [logs[f"base_s{s}"]["final_exact"]["val_bpb"] for s in SEEDS]
    assert base[0] != base[1]  # the seed reached the run


def test_summary_and_table_match_logs(ablation):
    proc, _, report, logs = ablation
    assert report["variants"] == {"base": {}, "lr": {"MATRIX_LR": "0.02"}, "bad": {"NUM_KV_HEADS": "3"}}
    assert report["env"] == dict(item.split("=", 1) for item in COMMON) and report["seeds"] == SEEDS
    assert "--variant lr=MATRIX_LR=0.02" in report["command"]
    post = {v: [logs[f"{v}_s{s}"]["final_exact"]["val_bpb"] for s in SEEDS] for v in ("base", "lr")}
    pre = {v: [logs[f"{v}_s{s}"]["pre_quant"]["val_bpb"] for s in SEEDS] for v in ("base", "lr")}
    rows = table_rows(proc.stdout)
    assert list(rows) == ["base", "lr", "bad"]
    for v in ("base", "lr"):
        s = report["summary"][v]
        diff = statistics.mean(post[v]) - statistics.mean(post["base"])
        p = None if v == "base" else stats.ttest_ind(post[v], post["base"], equal_var=False).pvalue
        ms = statistics.mean(logs[f"{v}_s{seed}"]["step_avg_ms"] for seed in SEEDS)
        assert (s["n_ok"], s["n_runs"]) == (2, 2)
        assert s["post_mean"] == pytest.approx(statistics.mean(post[v]), abs=1e-12)
        assert s["post_std"] == pytest.approx(statistics.stdev(post[v]), abs=1e-12)
        assert s["pre_mean"] == pytest.approx(statistics.mean(pre[v]), abs=1e-12)
        assert s["pre_std"] == pytest.approx(statistics.stdev(pre[v]), abs=1e-12)
        assert s["diff_vs_ref"] == pytest.approx(diff, abs=1e-12)
        assert s["p_vs_ref"] == (None if p is None else pytest.approx(p, rel=1e-9))
        assert s["step_avg_ms"] == pytest.approx(ms)
        assert rows[v] == [v, "2/2", f"{s['post_mean']:.4f} +- {s['post_std']:.4f}",
                           f"{s['pre_mean']:.4f} +- {s['pre_std']:.4f}", f"{diff:+.4f}",
                           "-" if p is None else f"{p:.3g}", f"{ms:.1f}"]
    assert report["summary"]["base"]["diff_vs_ref"] == 0


def test_failed_variant_is_reported(ablation):
    proc, out, report, _ = ablation
    bad = [r for r in report["runs"] if r["variant"] == "bad"]
    assert len(bad) == 2
    for r in bad:
        assert not r["ok"] and r["returncode"] == 1 and BAD_CONFIG in r["reason"], r
        assert r["post_bpb"] is None and r["pre_bpb"] is None
        assert BAD_CONFIG in (out / r["run_id"] / "stderr.txt").read_text()
        assert re.search(rf"(?m)^  {r['run_id']} \(.*\): .*{re.escape(BAD_CONFIG)}$", proc.stdout)
    s = report["summary"]["bad"]
    assert (s["n_ok"], s["n_runs"], s["post_mean"], s["diff_vs_ref"], s["p_vs_ref"]) == (0, 2, None, None, None)
    assert table_rows(proc.stdout)["bad"] == ["bad", "0/2", "- +- -", "- +- -", "-", "-", "-"]


# ---------------------------------------------------------------- refusals and helpers

@pytest.fixture
def marker_script(tmp_path):
    """A stand-in for train_gpt.py that only leaves a marker file, to show that nothing ran."""
    marker = tmp_path / "ran"
    script = tmp_path / "fake_train.py"
    script.write_text(f"open({str(marker)!r}, 'a').close()\n")
    return script, marker


@pytest.mark.parametrize("bad, message", [
    (["--variant", "a=", "--variant", "a=MATRIX_LR=1"], "variant 'a' is given twice"),
    (["--variant", "a=", "--variant", "b=matrix_lr=1"], "not KEY=VALUE"),
    (["--variant", "a=", "--variant", "b=MATRIX_LR"], "not KEY=VALUE"),
    (["--variant", "a b=", "--variant", "b="], "the name must be"),
    (["--variant", "=MATRIX_LR=1"], "the name must be"),
    (["--variant", "a=", "--seeds", "1", "2", "1"], "seed is repeated"),
    (["--variant", "a=", "--env", "NUM_LAYERS"], "--env"),
    (["--variant", "a=", "--script", "/nonexistent/train_gpt.py"], "does not exist"),
    (["--variant", "a=", "--out", "EXISTING"], "not empty"),
    (["--variant", "a=SEED=3"], "SEED is set by the tool"),
])
def test_bad_arguments_run_nothing(tmp_path, marker_script, bad, message):
    script, marker = marker_script
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    args = ["--seeds", "1", "--script", script, "--out", tmp_path / "out", *bad]
    proc = tool(*[existing if a == "EXISTING" else a for a in args])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ablate: error:") and message in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]


def test_fake_script_runs_are_failed_without_a_log(tmp_path, marker_script):
    """A script that exits 0 without writing a log is a failed run, not a dropped one."""
    script, marker = marker_script
    proc = tool("--variant", "a=", "--seeds", "1", "--script", script, "--out", tmp_path / "out",
                "--json", tmp_path / "r.json")
    assert proc.returncode == 1 and proc.stderr.strip() == "ablate: 1 of 1 runs failed"
    assert marker.exists()
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    assert not run["ok"] and run["returncode"] == 0 and run["reason"].startswith("no log")


def test_help():
    proc = tool("--help")
    assert proc.returncode == 0 and "--variant" in proc.stdout and "--jobs" in proc.stdout


def test_parse_variant_and_summarize():
    assert parse_variant("base=") == ("base", {})
    assert parse_variant("wn.2=SPHERE_OPT=wn,MUON_WD=0.04") == ("wn.2", {"SPHERE_OPT": "wn", "MUON_WD": "0.04"})
    assert parse_variant("x=EMPTY=") == ("x", {"EMPTY": ""})
    for spec in ("base", "b=A=1,A=2", "b=A=1,", "b/c="):
        with pytest.raises(AblateError):
            parse_variant(spec)
    runs = [{"variant": v, "ok": True, "post_bpb": b, "pre_bpb": b - 0.01, "step_avg_ms": 10.0}
            for v, b in (("a", 1.0), ("a", 1.2), ("b", 1.5))]
    s = summarize(runs, ["a", "b"])
    assert s["a"]["diff_vs_ref"] == 0 and s["b"]["diff_vs_ref"] == pytest.approx(0.4)
    assert s["b"]["post_std"] is None and s["b"]["p_vs_ref"] is None  # one value: no std, no test


def test_plan_env_precedence_and_launch(tmp_path, monkeypatch, marker_script):
    script, _ = marker_script
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NUM_LAYERS", "9")
    monkeypatch.setenv("MODEL_DIM", "9")
    args = SimpleNamespace(variant=["a=", "b=MODEL_DIM=256,DATA_PATH=data"], seeds=[3, 1],
                           env=["NUM_LAYERS=4", "MODEL_DIM=128", "TOKENIZER_PATH=tok.model"], script=script,
                           out=Path("out"), json=None, nproc=2, jobs=1)
    p = plan(args)
    assert p["launch"][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script.resolve())]
    assert [(r["variant"], r["seed"], r["dir"]) for r in p["runs"]] == [
        ("a", 3, Path("out/a_s3")), ("b", 3, Path("out/b_s3")), ("a", 1, Path("out/a_s1")), ("b", 1, Path("out/b_s1"))]
    a, b = p["runs"][0]["env"], p["runs"][1]["env"]
    assert (a["NUM_LAYERS"], a["MODEL_DIM"], b["MODEL_DIM"]) == ("4", "128", "256")  # variant > --env > environment
    assert (a["SEED"], a["RUN_ID"], b["RUN_ID"]) == ("3", "a_s3", "b_s3")
    assert a["TOKENIZER_PATH"] == str(tmp_path / "tok.model") and b["DATA_PATH"] == str(tmp_path / "data")
    assert "DATA_PATH" not in a or Path(a["DATA_PATH"]).is_absolute()
    assert not Path("out").exists()  # planning creates nothing
