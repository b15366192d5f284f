import subprocess
import sys

from _logs import REPO, SEPARATOR
from tools import plot
from tools.runlog import parse_log


def test_figure_has_one_line_per_log_in_each_axis(cpu_runs):
    logs = [run["log"] for run in cpu_runs]
    fig = plot.make_figure(logs)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.get_lines()) == len(logs)
    val_ax, train_ax = fig.axes
    first = parse_log(logs[0])
    assert list(val_ax.get_lines()[0].get_ydata()) == [s["val_bpb"] for s in first["val_steps"]]
    assert list(train_ax.get_lines()[0].get_xdata()) == [s["step"] for s in first["train_steps"]]
    assert [t.get_text() for t in train_ax.get_legend().get_texts()] == [parse_log(p)["run_id"] for p in logs]


def test_cli_writes_png(cpu_runs, tmp_path):
    out = tmp_path / "runs.png"
    assert plot.main([str(run["log"]) for run in cpu_runs] + ["--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_without_step_lines_fails(cpu_runs, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("print('hi')\n" + SEPARATOR + "\nrun_id:empty\n")
    assert plot.main([str(cpu_runs[0]["log"]), str(empty), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no step lines" in err
    assert not (tmp_path / "x.png").exists()


def test_help():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "plot.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout
