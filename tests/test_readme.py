"""The README cannot rot: its variable table is HPARAMS, its tool commands use flags the tools accept, and CI runs
its setup, test and demo commands."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import train_gpt

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_lines():
    """Shell lines of the README's ```bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_variable_table_is_hparams():
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)`", README, re.M))
    assert set(rows) == set(train_gpt.HPARAMS)
    for name, default in train_gpt.HPARAMS.items():
        assert rows[name] == str(default), name


def test_tool_commands_use_existing_flags():
    from concurrent.futures import ThreadPoolExecutor
    commands = [c for line in code_lines() for c in line.split("&&") if "tools/" in c]
    assert len(commands) >= 7
    uses = []
    for command in commands:
        words = shlex.split(command.strip().split(";")[-1].replace("<RUN_ID>", "RUN"))
        tool = next(w for w in words if w.startswith("tools/"))
        assert (ROOT / tool).is_file(), tool
        sub = (words[words.index(tool) + 1],) if tool in ("tools/data.py", "tools/requant.py") else ()
        uses.append((command, (tool, *sub), [w.split("=")[0] for w in words if w.startswith("--")]))
    helps = sorted({key for _, key, _ in uses})  # each tool's --help once, side by side (each imports torch)
    with ThreadPoolExecutor(4) as pool:
        texts = dict(zip(helps, pool.map(lambda key: subprocess.run(
            [sys.executable, *key, "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout, helps)))
    for command, key, flags in uses:
        for flag in flags:
            assert flag in texts[key], f"{command}: {flag} is not an option of {key[0]}"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = code_lines()
    for command in ("python -m pip install -r requirements.txt", "python -m pytest -q", "python tools/demo.py"):
        assert command in lines, command
    for command in ("python -m pip install -r requirements.txt", "python -m pytest -q", 'python "$OLDPWD/tools/demo.py"'):
        assert f"\n{command}" in ci or f" {command}" in ci, command


def test_every_hyperparameter_is_explained_where_it_is_declared():
    """One `NAME=default,  # what it is` line per hyperparameter in train_gpt.py's HPARAMS, in the table's order."""
    source = (ROOT / "train_gpt.py").read_text(encoding="utf-8")
    block = source[source.index("HPARAMS = dict("):source.index("\n)\n", source.index("HPARAMS = dict("))]
    declared = re.findall(r"(?m)^    ([A-Z0-9_]+)=.*,  # \S.*$", block)
    assert declared == list(train_gpt.HPARAMS)
    table = re.findall(r"^\| `([A-Z0-9_]+)` \| `", README, re.M)
    assert table == list(train_gpt.HPARAMS)
