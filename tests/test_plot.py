import subprocess
import sys

from _logs import REPO, SEPARATOR
from tools import plot
from tools.runlog import parse_log

RECORDS = REPO / "tests" / "fixtures" / "records"
REAL = [RECORDS / "2026-03-17_NaiveBaseline" / "train.log",
        RECORDS / "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon" / "train_seed42.log",
        RECORDS / "2026-05-01_SP8192_PR2130Base_Calib32" / "train_seed42.log"]


def test_figure_has_one_line_per_log_in_each_axis(cpu_runs):
    logs = [run["log"] for run in cpu_runs]
    fig, skipped = plot.make_figure(logs)
    assert len(fig.axes) == 2 and skipped == []
    for ax in fig.axes:
        assert len(ax.get_lines()) == len(logs)
    val_ax, train_ax = fig.axes
    first = parse_log(logs[0])
    assert list(val_ax.get_lines()[0].get_ydata()) == [s["val_bpb"] for s in first["val_steps"]]
    assert list(train_ax.get_lines()[0].get_xdata()) == [s["step"] for s in first["train_steps"]]
    # each run's folder (above its logs/) and its seed
    assert [t.get_text() for t in train_ax.get_legend().get_texts()] == [
        f"{p.parent.parent.name} seed {parse_log(p)['seed']}" for p in logs]


def test_real_logs_of_every_generation(tmp_path):
    """The naive baseline (March), #549 (March, TTT) and #2135 (April/May format: validation lines carry no time, the
    train line's at that step is used). Two logs named alike get their folder and seed as labels."""
    fig, skipped = plot.make_figure(REAL)
    val_ax, train_ax = fig.axes
    assert skipped == [] and len(train_ax.get_lines()) == 3
    assert [t.get_text() for t in train_ax.get_legend().get_texts()] == [
        "2026-03-17_NaiveBaseline seed 1337", "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon seed 42",
        "2026-05-01_SP8192_PR2130Base_Calib32 seed 42"]
    april = val_ax.get_lines()[2]
    # `0/20000 val_loss: 9.0076 val_bpb: 4.1158` ... `5001/20000 ... val_bpb: 1.0722` at the stop's 599,672 ms
    assert april.get_xdata()[0] == 0 and april.get_ydata()[0] == 4.1158
    assert april.get_xdata()[-1] == 599.672 and april.get_ydata()[-1] == 1.0722
    baseline = val_ax.get_lines()[0]
    assert baseline.get_xdata()[-1] == 600.038 and baseline.get_ydata()[-1] == 1.2172


def test_cli_writes_png(cpu_runs, tmp_path):
    out = tmp_path / "runs.png"
    assert plot.main([str(run["log"]) for run in cpu_runs] + [str(REAL[-1]), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logs_it_cannot_draw_are_named_and_the_rest_drawn(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("print('hi')\n" + SEPARATOR + "\nrun_id:empty\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a log\n")
    out = tmp_path / "x.png"
    assert plot.main([str(REAL[0]), str(empty), str(notes), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"skipped {empty}: no step lines", f"skipped {notes}: " + parse_log(notes)["unrecognized"]]
    assert out.exists()
    assert plot.main([str(empty), "--out", str(tmp_path / "y.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no log can be drawn" in err and not (tmp_path / "y.png").exists()


def test_help():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "plot.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout
