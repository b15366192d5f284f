"""Train logs for the tool tests: helpers to doctor copies of the real runs (conftest's `cpu_runs`, dicts
{"log", "script", "ptz"}), and synthetic logs whose script source holds decoy log lines."""

from __future__ import annotations

import random
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEPARATOR = "=" * 100

# The trap lines inside the docstring look like log lines: they must never be parsed.
FAKE_SOURCE = '''"""Stand-in for train_gpt.py (synthetic test logs).
step:999/999 train_loss:nan train_time:999999999ms step_avg:1.00ms
error: this line is source text, not a log line
"""
import os

print("seed", int(os.environ.get("SEED", "1337")))
'''

TEMPLATE = """run_id:{run_id}
python:3.11.7 torch:2.13.0+cpu
hardware:2x cpu
world_size:2 grad_accum_steps:4
hparam DATA_PATH=./data/datasets/fineweb10B_sp1024
hparam RUN_ID={run_id}
hparam SEED={seed}
hparam ITERATIONS=200
hparam NUM_LAYERS=2
hparam MODEL_DIM=64
hparam QUANT_BITS=6
hparam MAX_WALLCLOCK_SECONDS=600
hparam TRAIN_BATCH_TOKENS=8192
hparam TRAIN_SEQ_LEN=256
code_bytes:{code}
model_params:28345
step:1/200 train_loss:6.9312 train_time:812ms step_avg:812.00ms
step:100/200 train_loss:{mid:.4f} train_time:4500ms step_avg:45.00ms
step:100/200 val_loss:{mid:.4f} val_bpb:{mid_bpb:.4f} train_time:4500ms step_avg:45.00ms
step:200/200 train_loss:{pre:.4f} train_time:9000ms step_avg:45.00ms
step:200/200 val_loss:{pre:.4f} val_bpb:{pre_bpb:.4f} train_time:9000ms step_avg:45.00ms
peak_memory allocated:1234MiB reserved:1300MiB
pre_quant val_loss:{pre:.4f} val_bpb:{pre_bpb:.4f}
submission_bytes code:{code} model:{model} total:{total} limit:16000000
final_roundtrip_plain val_loss:{loss:.4f} val_bpb:{plain_bpb:.4f}
quant_gap_bpb:{gap:.4f}
final_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:1234ms
final_roundtrip_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}
eval_phase_time:2500ms
"""


def synthesize_runs(directory: Path, seeds=(1337, 42, 2024)) -> list[dict]:
    """Write a fake script, and per seed a ptz of known size and a log whose byte counts match."""
    script = directory / "train_gpt.py"
    script.write_text(FAKE_SOURCE)
    code = script.stat().st_size
    runs = []
    for seed in seeds:
        rng = random.Random(seed)
        run_dir = directory / f"seed{seed}"
        run_dir.mkdir()
        ptz = run_dir / "final_model.ptz"
        ptz.write_bytes(rng.randbytes(20_000 + seed % 1000))
        model = ptz.stat().st_size
        loss = 4.01 + rng.uniform(-0.02, 0.02)
        ratio = 0.578 + rng.uniform(-0.001, 0.001)
        values = dict(run_id=f"synthetic_{seed}", seed=seed, code=code, model=model, total=code + model,
                      mid=5.0 + rng.uniform(0, 0.1), pre=loss - 0.01, loss=loss, bpb=loss * ratio, gap=0.0039)
        values.update(mid_bpb=values["mid"] * ratio, pre_bpb=values["pre"] * ratio,
                      plain_bpb=values["bpb"] + values["gap"])
        log = run_dir / f"synthetic_{seed}.txt"
        log.write_text(FAKE_SOURCE + "\n" + SEPARATOR + "\n" + TEMPLATE.format(**values))
        runs.append({"log": log, "script": script, "ptz": ptz})
    return runs


def copy_run(run: dict, directory: Path) -> dict:
    """Copy a run's log, script and ptz into a new folder so a test may doctor them."""
    directory.mkdir(parents=True)
    return {key: Path(shutil.copy(run[key], directory / run[key].name)) for key in ("log", "script", "ptz")}


def edit_body(log: Path, edit) -> None:
    """Apply edit(str) -> str to the part of the log after the separator; it must change something."""
    text = log.read_text()
    cut = text.index("\n" + SEPARATOR + "\n") + len(SEPARATOR) + 2
    body = edit(text[cut:])
    assert body != text[cut:], "the edit changed nothing"
    log.write_text(text[:cut] + body)


def sub_line(body: str, prefix: str, pattern: str, repl: str, last: bool = True) -> str:
    """In the last (or first) line starting with prefix, substitute pattern by repl."""
    lines = body.split("\n")
    index = [i for i, line in enumerate(lines) if line.startswith(prefix)][-1 if last else 0]
    lines[index] = re.sub(pattern, repl, lines[index])
    return "\n".join(lines)
