"""tools/requant.py on a real tiny run (conftest's cpu_runs: the last seed's final_model.pt): both methods exported
and scored within 0.5% below the budget; the stand-in export; one line for a wrong model."""
import re
import subprocess
import sys
from pathlib import Path

from _logs import REPO

REQUANT = [sys.executable, str(REPO / "tools" / "requant.py")]


def test_table_at_equal_bytes(cpu_runs):
    run = cpu_runs[-1]
    model = Path(run["script"]).parent / "final_model.pt"
    out = subprocess.run(REQUANT + ["table", "--log", str(run["log"]), "--model", str(model), "--bytes-per-param",
                                    "0.5", "--val-tokens", "4096", "--methods", "rtn", "gptq"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    rows = {m: (int(b.replace(",", "")), float(gap)) for m, b, gap in
            re.findall(r"(?m)^\| (\w+) \| ([\d,]+) \| .* \| ([+-]\d+\.\d{4}) \|$", out.stdout)}
    assert list(rows) == ["rtn", "gptq"]
    params = int(re.search(r"^([\d,]+) parameters", out.stdout).group(1).replace(",", ""))
    for method in ("rtn", "gptq"):
        assert 0.995 * int(0.5 * params) <= rows[method][0] <= int(0.5 * params), method


def test_standin_and_failures(cpu_runs, tmp_path):
    run = cpu_runs[-1]
    model = Path(run["script"]).parent / "final_model.pt"
    out = subprocess.run(REQUANT + ["standin", "--log", str(run["log"]), "--model", str(model), "--env",
                                    "NUM_LAYERS=2", "MODEL_DIM=128", "NUM_HEADS=4", "NUM_KV_HEADS=2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"(?m)^export method:gptq step:\S+xRMS .* export_time:\d+ms$", out.stdout)
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"not a checkpoint")
    bad = subprocess.run(REQUANT + ["table", "--log", str(run["log"]), "--model", str(wrong)], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "does not load" in bad.stderr
    env = subprocess.run(REQUANT + ["standin", "--log", str(run["log"]), "--model", str(model), "--env", "NOPE=1"],
                         capture_output=True, text=True)
    assert env.returncode == 2 and "NAME=VALUE" in env.stderr
