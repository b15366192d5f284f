"""Code bytes counted as the merged records count them (#1855, #2135): the self-extracting wrapper that train_gpt.py
builds of itself runs as the source does, its size is what the log, the budget and tools/check.py count."""
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.check import counted_code_bytes
from train_gpt import code_wrapper, minified

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "train_gpt.py").read_text(encoding="utf-8")


def test_wrapper_is_small_and_minified_is_the_same_program():
    wrapper = code_wrapper(SOURCE)
    print(f"plain {len(SOURCE.encode())} bytes, minified {len(minified(SOURCE).encode())}, wrapper {len(wrapper.encode())}")
    assert len(wrapper.encode()) < 0.4 * len(SOURCE.encode())
    # the same statements: only docstrings dropped (comments never reach the AST)
    names = {n.name for n in ast.walk(ast.parse(SOURCE)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert names == {n.name for n in ast.walk(ast.parse(minified(SOURCE))) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert '"""' not in minified(SOURCE) and "# -----" not in minified(SOURCE)
    assert counted_code_bytes(SOURCE) == len(wrapper.encode())
    assert counted_code_bytes("print('no wrapper here')\n") is None


def run_script(path: Path, cwd: Path, env: dict) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_wrapper_runs_as_the_source(tmp_path, tiny_run_env):
    """Written to a file, `python wrapper.py` trains, exports and scores exactly as `python train_gpt.py`; bad input
    stops both with the same line."""
    env = {**tiny_run_env, "ITERATIONS": "8", "VAL_LOSS_EVERY": "0", "TTT": "0", "EVAL_STRIDE": "64",
           "WARMUP_STEPS": "0"}
    from concurrent.futures import ThreadPoolExecutor

    def both_runs(name):
        work = tmp_path / name
        work.mkdir()
        script = work / "train_gpt.py"
        if name == "source":
            shutil.copy(ROOT / "train_gpt.py", script)
        else:
            script.write_text(code_wrapper(SOURCE), encoding="utf-8")
        rc, out, err = run_script(script, work, {**env, "RUN_ID": name})
        assert rc == 0, out[-2000:] + err[-2000:]
        final = re.search(r"(?m)^final_roundtrip_exact .*$", out).group(0)
        losses = re.findall(r"(?m)^step:\d+/8 train_loss:(\S+)", out)
        bad = run_script(script, work, {**env, "NUM_KV_HEADS": "3"})
        assert bad[0] == 1 and "NUM_HEADS=4 is not divisible by NUM_KV_HEADS=3" in bad[2]
        return final, losses, (work / "final_model.ptz").read_bytes()
    with ThreadPoolExecutor(2) as pool:  # the source and the wrapper side by side, one thread each
        results = dict(zip(("source", "wrapper"), pool.map(both_runs, ("source", "wrapper"))))
    assert results["source"][:2] == results["wrapper"][:2]
    assert results["source"][2] == results["wrapper"][2]  # the same artifact, byte for byte


def test_log_counts_the_wrapper_and_check_recounts_both(cpu_runs):
    run = cpu_runs[0]
    body = run["log"].read_text(encoding="utf-8").split("=" * 100, 1)[1]
    m = re.search(r"(?m)^code_bytes:(\d+) code_bytes_plain:(\d+)$", body)
    assert m and int(m.group(1)) == counted_code_bytes(run["script"].read_text()) and \
        int(m.group(2)) == run["script"].stat().st_size
    sizes = re.search(r"(?m)^submission_bytes code:(\d+) model:(\d+) total:(\d+)", body)
    assert int(sizes.group(1)) == int(m.group(1))
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "check.py"), str(run["log"]), "--script",
                            str(run["script"]), "--ptz", str(run["ptz"])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(rf"code counting\s+\| {m.group(1)} bytes as the records count it .* plain {m.group(2)}", check.stdout)


@pytest.mark.parametrize("extra", [200_000])
def test_check_says_which_convention_passes(cpu_runs, tmp_path, extra):
    """A script whose plain bytes would push code + model over 16 MB while its wrapper's count does not: check passes
    by the records' count and says the plain count is over."""
    from tools.check import check_log
    run = cpu_runs[0]
    model = run["ptz"].stat().st_size
    big = tmp_path / "train_gpt.py"
    # a long comment compresses to nothing: plain bytes up by 16 MB - model, counted bytes barely move
    big.write_text(run["script"].read_text() + "#" * (16_000_000 - model + extra) + "\n")
    rows = {r.rule: r for r in check_log(run["log"], big, run["ptz"])}
    assert rows["artifact bytes"].status == "PASS"
    assert "only the wrapper's count passes" in rows["code counting"].value
