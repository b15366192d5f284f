"""tools/size.py: a row per tensor (or kind) whose parameters add up to the model's, the file's bytes, code + file
against the limit, and one line and exit 1 for a file that is not an artifact."""
import re
import subprocess
import sys

import torch

from _logs import REPO
from train_gpt import GPT, code_wrapper, load_hparams, write_artifact

SIZE = [sys.executable, str(REPO / "tools" / "size.py")]


def artifact(tmp_path):
    h = load_hparams({"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "VOCAB_SIZE": "512",
                      "QUANT_METHOD": "rtn"})
    torch.manual_seed(0)
    model = GPT(h)
    path = tmp_path / "final_model.ptz"
    write_artifact(model, str(path), h, 0, 60_000, None, lambda line: None)
    return model, path


def test_rows_add_up_and_totals_match_the_file(tmp_path):
    model, path = artifact(tmp_path)
    n = sum(p.numel() for p in model.parameters())
    out = subprocess.run(SIZE + [str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    rows = re.findall(r"(?m)^(\S+(?: \(step\))?)\s+(unit|rows|step|raw)\s+([\d,]+)\s", out.stdout)
    names = [name for name, role, _ in rows if role != "step"]
    assert sorted(names) == sorted(dict(model.named_parameters()))
    steps = sum(int(p.replace(",", "")) for _, role, p in rows if role == "step")
    assert sum(int(p.replace(",", "")) for _, role, p in rows if role != "step") == n and steps == 512
    file_line = re.search(r"(?m)^the file\s+([\d,]+)\s+([\d,]+)\s", out.stdout)
    assert int(file_line.group(1).replace(",", "")) == n + steps
    assert int(file_line.group(2).replace(",", "")) == path.stat().st_size
    assert "step': 0." in out.stdout or '"step"' in out.stdout  # how it was quantized, from the header

    by_kind = subprocess.run(SIZE + [str(path), "--by", "kind", "--script", str(REPO / "train_gpt.py")],
                             capture_output=True, text=True)
    up = sum(b.up.numel() for b in model.blocks)
    assert by_kind.returncode == 0 and re.search(rf"(?m)^up x2\s+unit\s+{up:,}\s", by_kind.stdout)
    total = len(code_wrapper((REPO / "train_gpt.py").read_text()).encode()) + path.stat().st_size  # code as counted
    assert f"{total:,}" in by_kind.stdout and "bytes to the limit" in by_kind.stdout


def test_not_an_artifact_is_one_line_and_exit_1(tmp_path):
    _, path = artifact(tmp_path)
    data = path.read_bytes()
    for broken in (data[:-5], b"hello"):
        bad = tmp_path / "bad.ptz"
        bad.write_bytes(broken)
        out = subprocess.run(SIZE + [str(bad)], capture_output=True, text=True)
        assert out.returncode == 1 and out.stdout == ""
        assert len(out.stderr.splitlines()) == 1 and "is not a loadable artifact" in out.stderr
    missing = subprocess.run(SIZE + [str(tmp_path / "none.ptz")], capture_output=True, text=True)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert subprocess.run(SIZE + ["--help"], capture_output=True, text=True).returncode == 0
    assert subprocess.run(SIZE + [str(path), "--by", "layer"], capture_output=True, text=True).returncode == 2
