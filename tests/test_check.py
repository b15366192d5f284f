import re
import subprocess
import sys

from _logs import REPO, copy_run, edit_body, sub_line, synthesize_runs
from tools.check import check_log, counted_code_bytes, violations
from tools.runlog import parse_log

CHECK = [sys.executable, str(REPO / "tools" / "check.py")]


def failed(run, **kwargs):
    return {row.rule for row in violations(check_log(run["log"], run["script"], run["ptz"], **kwargs))}


def test_clean_logs_pass(cpu_runs):
    assert len(cpu_runs) == 3
    for run in cpu_runs:
        rows = check_log(run["log"], run["script"], run["ptz"])
        assert violations(rows) == [], rows
        assert {row.rule for row in rows} == {
            "artifact bytes", "code counting", "bytes match log", "training time", "evaluation time",
            "training compiles", "evaluation warm-up", "final score",
            "source matches script", "finite losses", "no error line", "8x H100"}


def test_synthetic_source_is_split_off(tmp_path):
    run = synthesize_runs(tmp_path)[0]
    log = parse_log(run["log"])
    assert log["source"].encode() == run["script"].read_bytes()
    assert log["nonfinite"] == [] and log["errors"] == []
    assert (log["steps"], log["train_time_ms"], log["eval_time_ms"]) == (200, 9000.0, 2500.0)
    assert [s["step"] for s in log["train_steps"]] == [1, 100, 200]
    assert log["hparams"]["SEED"] == "1337" and log["world_size"] == 2


def _grow_ptz(run, total):
    """Resize the ptz so script + ptz == total bytes and make the log's byte line agree."""
    code = counted_code_bytes(run["script"].read_text())
    run["ptz"].write_bytes(b"\0" * (total - code))
    edit_body(run["log"], lambda body: sub_line(
        body, "submission_bytes ", r"model:\d+ total:\d+", f"model:{total - code} total:{total}"))


def test_bytes_at_cap_pass_and_one_over_fails(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    _grow_ptz(run, 16_000_000)
    assert failed(run) == set()
    _grow_ptz(run, 16_000_001)
    assert failed(run) == {"artifact bytes"}
    assert failed({**run, "script": None, "ptz": None}) == {"artifact bytes"}  # the log's own total


def test_log_total_differing_from_files_fails(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    with open(run["ptz"], "ab") as f:
        f.write(b"\0")
    assert failed(run) == {"bytes match log"}


def test_training_time_cap(cpu_runs, tmp_path):
    """GPTQ's calibration reads training data: its line's train_time (training + calibration) is what is capped."""
    run = copy_run(cpu_runs[0], tmp_path / "run")
    assert parse_log(run["log"])["calibration_ms"] is not None
    edit_body(run["log"], lambda body: sub_line(body, "step:", r"train_time:\S+", "train_time:599000ms"))
    edit_body(run["log"], lambda body: sub_line(body, "calibration ", r"train_time:\S+", "train_time:600000ms"))
    assert failed(run) == set()
    edit_body(run["log"], lambda body: sub_line(body, "calibration ", r"train_time:\S+", "train_time:600001ms"))
    assert failed(run) == {"training time"}


def test_evaluation_time_cap(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    edit_body(run["log"], lambda body: sub_line(body, "eval_phase_time:", r"\S+", "eval_phase_time:600001ms"))
    assert failed(run) == {"evaluation time"}


def test_evaluation_time_falls_back_to_final_roundtrip(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    edit_body(run["log"], lambda body: re.sub(r"(?m)^eval_phase_time:.*\n", "", body))
    assert failed(run) == set()
    edit_body(run["log"], lambda body: sub_line(body, "final_roundtrip_plain ", r"eval_time:\S+", "eval_time:300000ms"))
    assert failed(run) == set()
    # with TTT the plain pass and the TTT score both count: 300,000 + 300,001 ms is over
    edit_body(run["log"], lambda body: sub_line(body, "final_ttt_roundtrip ", r"eval_time:\S+", "eval_time:300001ms"))
    assert failed(run) == {"evaluation time"}


def test_script_one_character_different_fails(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    data = bytearray(run["script"].read_bytes())
    i = next(i for i in range(len(data) // 2, len(data)) if bytes([data[i]]).isalpha())
    data[i] = ord("a") if data[i] != ord("a") else ord("b")
    run["script"].write_bytes(bytes(data))
    rows = check_log(run["log"], run["script"], run["ptz"])
    assert {row.rule for row in violations(rows)} == {"source matches script"}
    assert f"differs at byte {i}" in {row.rule: row.value for row in rows}["source matches script"]


def test_missing_final_line_fails(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    edit_body(run["log"], lambda body: re.sub(r"(?m)^final_(ttt_)?roundtrip_exact .*\n", "", body))
    assert failed(run) == {"final score"}


def test_nan_train_loss_fails(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    edit_body(run["log"], lambda body: sub_line(body, "step:", r"train_loss:\S+", "train_loss:nan", last=False))
    assert failed(run) == {"finite losses"}


def test_error_line_fails(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    edit_body(run["log"], lambda body: body + "error: CUDA out of memory\n")
    assert failed(run) == {"no error line"}


def test_8xh100_is_info_unless_required(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")  # a CPU run
    rows = {row.rule: row.status for row in check_log(run["log"], run["script"], run["ptz"])}
    assert rows["8x H100"] == "INFO"
    assert failed(run, require_8xh100=True) == {"8x H100"}
    edit_body(run["log"], lambda body: re.sub(r"(?m)^world_size:\d+", "world_size:8", re.sub(
        r"(?m)^hardware:.*$", "hardware:8x NVIDIA H100 80GB HBM3", body)))
    assert failed(run, require_8xh100=True) == set()


def test_cli_exit_codes(cpu_runs, tmp_path):
    run = copy_run(cpu_runs[0], tmp_path / "run")
    args = [str(run["log"]), "--script", str(run["script"]), "--ptz", str(run["ptz"])]
    clean = subprocess.run(CHECK + args, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert "PASS" in clean.stdout and "FAIL" not in clean.stdout
    edit_body(run["log"], lambda body: sub_line(body, "calibration ", r"train_time:\S+", "train_time:600001ms"))
    edit_body(run["log"], lambda body: body + "error: boom\n")
    bad = subprocess.run(CHECK + args, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == ["FAIL training time: 600.001 s (limit: 600 s)",
                                       "FAIL no error line: error: boom (limit: none)"]
    missing = subprocess.run(CHECK + [str(tmp_path / "nope.txt")], capture_output=True, text=True)
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1


def test_help():
    result = subprocess.run(CHECK + ["--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout
