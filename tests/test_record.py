import json
import re
import statistics
import subprocess
import sys

import pytest
from scipy import stats

from _logs import REPO, SEPARATOR, copy_run, edit_body, sub_line
from tools import record
from tools.check import counted_code_bytes

DATE = "2026-01-02"


def log_facts(path):
    """The numbers record.py must report, read here with independent regexes."""
    body = path.read_text().split("\n" + SEPARATOR + "\n", 1)[1]
    # the score is the last final line: with TTT (the default) the TTT score after the plain one
    loss, bpb = re.findall(r"(?m)^final_(?:ttt_)?roundtrip_exact val_loss:(\S+) val_bpb:(\S+)$", body)[-1]
    steps = re.findall(r"(?m)^step:(\d+)/\d+ .*train_time:(\d+(?:\.\d+)?)ms step_avg:(\S+)ms$", body)
    eval_ms = re.search(r"(?m)^eval_phase_time:(\S+)ms$", body)
    eval_ms = eval_ms or re.search(r"(?m)^final_roundtrip .*eval_time:(\S+)ms", body)
    return {"seed": int(re.search(r"(?m)^hparam SEED=(\d+)$", body).group(1)),
            "val_loss": float(loss), "val_bpb": float(bpb),
            "artifact_bytes": int(re.search(r"(?m)^submission_bytes .*total:(\d+)", body).group(1)),
            "steps": int(steps[-1][0]), "step_avg_ms": float(steps[-1][2]),
            "eval_time_s": float(eval_ms.group(1)) / 1000,
            "torch": re.search(r"(?m)^python:\S+ torch:(\S+)", body).group(1),
            "hardware": re.search(r"(?m)^hardware:(.*)$", body).group(1).strip()}


@pytest.fixture
def runs(cpu_runs, tmp_path):
    return [copy_run(run, tmp_path / f"run{i}") for i, run in enumerate(cpu_runs)]


def args(runs, tmp_path, *extra, ptz=True):
    """record.py arguments; a later option in extra overrides an earlier one."""
    sizes = ["--ptz", *(str(r["ptz"]) for r in runs)] if ptz else ["--ptz-bytes-from-log"]
    return [*(str(r["log"]) for r in runs), "--name", "TinyNGPT", "--title", "Tiny nGPT on two CPU ranks",
            "--author", "Test Author", "--github-id", "tester", "--blurb", "A tiny CPU run.", "--date", DATE,
            "--script", str(runs[0]["script"]), *sizes, "--records-dir", str(tmp_path / "records"), *extra]


def folder(tmp_path, track="10min_16mb"):
    return tmp_path / "records" / f"track_{track}" / f"{DATE}_TinyNGPT"


def snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_record_three_seeds(runs, tmp_path, capsys):
    facts = [log_facts(r["log"]) for r in runs]
    bpbs, losses = [f["val_bpb"] for f in facts], [f["val_loss"] for f in facts]
    best = statistics.mean(bpbs) + 0.01
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("sentencepiece\nzstandard\n")
    extra = tmp_path / "helper_notes.md"
    extra.write_text("how the tokenizer was made\n")
    assert record.main(args(runs, tmp_path, "--best", str(best), "--requirements", str(requirements),
                            "--extra", str(extra))) == 0
    out = folder(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["log"].name for r in runs] + ["README.md", "requirements.txt", "submission.json", "train_gpt.py",
                                         "helper_notes.md"])
    assert (out / "helper_notes.md").read_bytes() == extra.read_bytes()
    assert (out / "train_gpt.py").read_bytes() == runs[0]["script"].read_bytes()
    for r in runs:
        assert (out / r["log"].name).read_bytes() == r["log"].read_bytes()

    sub = json.loads((out / "submission.json").read_text())
    assert list(sub) == list(record.FIELDS)
    assert (sub["author"], sub["github_id"], sub["name"], sub["date"], sub["track"]) == (
        "Test Author", "tester", "Tiny nGPT on two CPU ranks", DATE, "10min_16mb")
    assert sub["seeds"] == [f["seed"] for f in facts]
    assert sub["val_bpb"] == pytest.approx(statistics.mean(bpbs), abs=1e-12)
    assert sub["val_loss"] == pytest.approx(statistics.mean(losses), abs=1e-12)
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(bpbs), abs=1e-12)
    assert sub["val_loss_std"] == pytest.approx(statistics.stdev(losses), abs=1e-12)
    keys = ("val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s")
    assert {s: {k: r[k] for k in keys} for s, r in sub["seed_results"].items()} == {
        str(f["seed"]): {k: pytest.approx(f[k]) for k in keys} for f in facts}
    assert sub["bytes_total"] == sub["artifact_bytes_max"] == max(f["artifact_bytes"] for f in facts)
    assert sub["artifact_bytes_mean"] == pytest.approx(statistics.mean(f["artifact_bytes"] for f in facts))
    assert sub["train_steps_mean"] == pytest.approx(statistics.mean(f["steps"] for f in facts))
    assert sub["step_avg_ms_mean"] == pytest.approx(statistics.mean(f["step_avg_ms"] for f in facts))
    assert sub["bytes_code"] == counted_code_bytes(runs[0]["script"].read_text())  # as the records count it
    assert sub["hardware"] == facts[0]["hardware"] and sub["pytorch_version"] == facts[0]["torch"]
    assert sub["comparison_baseline_bpb"] == best
    assert sub["delta_vs_leaderboard_bpb"] == pytest.approx(statistics.mean(bpbs) - best)
    assert sub["delta_vs_leaderboard_nats"] == pytest.approx(
        (statistics.mean(bpbs) - best) * statistics.mean(l / b for l, b in zip(losses, bpbs)))
    assert all(isinstance(v, str) and v.strip() for k, v in sub.items() if isinstance(v, str))

    ratio = statistics.mean(b / l for b, l in zip(bpbs, losses))
    p = stats.ttest_1samp(bpbs, best - 0.005 * ratio, alternative="less").pvalue
    assert sub["p_value"] == pytest.approx(p, rel=1e-9)
    assert f"p = {p:.6g}" in capsys.readouterr().out

    readme = (out / "README.md").read_text()
    assert readme.startswith("# Tiny nGPT on two CPU ranks\n\nA tiny CPU run.\n")
    assert "`ngpt-wrapper`" in readme and "- `helper_notes.md`" in readme
    for f in facts:
        assert re.search(rf"\| {f['seed']} \| {f['val_loss']:.8f} \| {f['val_bpb']:.8f} \| {f['artifact_bytes']} \|",
                         readme)
    assert f"val_bpb {statistics.mean(bpbs):.8f} (std {statistics.stdev(bpbs):.8f})" in readme
    assert f"p = {p:.6g}" in readme
    assert f"SEED={facts[0]['seed']}" in readme and "torchrun --standalone --nproc_per_node=" in readme

    before = snapshot(tmp_path / "records")
    assert record.main(args(runs, tmp_path, "--best", str(best))) != 0
    assert "already exists" in capsys.readouterr().err
    assert snapshot(tmp_path / "records") == before


def test_welch_against_best_logs(runs, tmp_path):
    theirs = [log_facts(r["log"])["val_bpb"] + 0.02 for r in runs]
    best_logs = []
    for r, value in zip(runs, theirs):
        best = tmp_path / f"best_{r['log'].name}"
        best.write_text(r["log"].read_text())
        edit_body(best, lambda body: sub_line(body, "final_ttt_roundtrip_exact ", r"val_bpb:\S+", f"val_bpb:{value:.8f}"))
        best_logs.append(str(best))
    assert record.main(args(runs, tmp_path, "--track", "non_record_16mb", "--best-logs", *best_logs)) == 0
    sub = json.loads((folder(tmp_path, "non_record_16mb") / "submission.json").read_text())
    facts = [log_facts(r["log"]) for r in runs]
    ours = [f["val_bpb"] for f in facts]
    shift = 0.005 * statistics.mean(f["val_bpb"] / f["val_loss"] for f in facts)
    p = stats.ttest_ind(ours, [t - shift for t in theirs], equal_var=False, alternative="less").pvalue
    assert sub["p_value"] == pytest.approx(p, rel=1e-9)


def test_single_seed_cannot_test_and_bytes_from_log(runs, tmp_path):
    assert record.main(args(runs[:1], tmp_path, "--best", "1.0", ptz=False)) == 0
    out = folder(tmp_path)
    sub = json.loads((out / "submission.json").read_text())
    assert "p_value" not in sub and "val_bpb_std" not in sub and not (out / "requirements.txt").exists()
    assert "cannot be run" in (out / "README.md").read_text()


def test_refuses_violations_and_other_scripts(runs, tmp_path, capsys):
    edit_body(runs[1]["log"], lambda body: sub_line(body, "step:", r"train_loss:\S+", "train_loss:nan", last=False))
    assert record.main(args(runs, tmp_path)) == 1
    assert "finite losses" in capsys.readouterr().err
    other = tmp_path / "other.py"
    other.write_bytes(runs[0]["script"].read_bytes() + b"\n")
    assert record.main(args(runs[::2], tmp_path, "--script", str(other))) == 1
    assert "source matches script" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def test_help():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "record.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_default_best_is_the_leaderboard(runs, tmp_path):
    assert record.main(args(runs, tmp_path)) == 0
    sub = json.loads((folder(tmp_path) / "submission.json").read_text())
    assert sub["comparison_baseline_bpb"] == 1.05651
    assert sub["p_value"] > 0.01  # a tiny CPU model does not beat the leaderboard


def test_refuses_blank_text_and_clashing_extras(runs, tmp_path, capsys):
    assert record.main(args(runs, tmp_path, "--blurb", "  ")) == 1
    assert "--blurb is empty" in capsys.readouterr().err
    clash = tmp_path / "README.md"
    clash.write_text("mine\n")
    assert record.main(args(runs, tmp_path, "--extra", str(clash))) == 1
    assert "--extra README.md" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


MARCH_TTT = REPO / "tests" / "fixtures" / "records" / "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"


def test_record_from_a_real_folders_logs(tmp_path, capsys):
    """#549's three console logs and script (March format, no source, no hardware line): accepted, with the hardware
    and torch version given on the command line, and the numbers of its logs (by hand: legal_ttt_exact val_bpb
    1.11922988 / 1.11888882 / 1.12002032, totals 15,977,386 / 15,990,006 / 15,876,510 bytes)."""
    logs = [MARCH_TTT / f"train_seed{s}.log" for s in (1337, 42, 2025)]
    base = [*map(str, logs), "--script", str(MARCH_TTT / "train_gpt.py"), "--ptz-bytes-from-log", "--name",
            "LeakyReLU_LegalTTT", "--title", "LeakyReLU² + Legal Score-First TTT", "--author", "A", "--github-id", "a",
            "--blurb", "A March record, rebuilt.", "--date", DATE, "--records-dir", str(tmp_path / "records"),
            "--best", "1.1228"]
    assert record.main(base) == 1
    assert "--hardware (the logs do not name it) is empty" in capsys.readouterr().err
    assert record.main(base + ["--hardware", "8xH100 80GB SXM", "--pytorch-version", "2.9.1+cu128"]) == 0
    out = tmp_path / "records" / "track_10min_16mb" / f"{DATE}_LeakyReLU_LegalTTT"
    sub = json.loads((out / "submission.json").read_text())
    bpbs = [1.11922988, 1.12002032, 1.11888882]
    assert sub["seeds"] == [1337, 42, 2025] and sub["val_bpb"] == pytest.approx(statistics.mean(bpbs), abs=1e-12)
    assert round(sub["val_bpb"], 4) == 1.1194  # the folder's own submission.json
    assert sub["bytes_total"] == sub["artifact_bytes_max"] == 15990006
    assert sub["bytes_code"] == 89458  # plain: the March scripts count the file
    assert sub["seed_results"]["1337"]["steps"] == 7179 and sub["seed_results"]["1337"]["train_wallclock_ms"] == 600128
    assert sub["seed_results"]["1337"]["eval_time_s"] == pytest.approx(490.896)
    assert sub["train_steps_mean"] == pytest.approx((7179 + 7182 + 7193) / 3)
    assert sub["comparison_baseline_bpb"] == 1.1228 and sub["hardware"] == "8xH100 80GB SXM"
    readme = (out / "README.md").read_text()
    assert readme.startswith("# LeakyReLU² + Legal Score-First TTT\n") and "`plain`" in readme
    assert "## Commands" not in readme  # its hyperparameters are not environment variables
