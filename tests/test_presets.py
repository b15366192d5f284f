"""The shapes the README offers fill the 16,000,000 bytes: the default (sp1024) and the sp8192 preset, each built
at full size, filled with heavy-tailed unit rows (a stand-in for trained weights: Student-t(5) draws; the measured
stand-in drawn from CPU-trained weights is tools/requant.py standin), exported against the real budget with the real
code bytes: code + model lands in [15,920,000, 16,000,000] at no more than 0.45 bytes per parameter."""
import re
import shlex
import time
from pathlib import Path

import pytest
import torch

import train_gpt
from train_gpt import GPT, SIZE_LIMIT, check_config, load_hparams, write_artifact

ROOT = Path(__file__).resolve().parents[1]


def readme_preset() -> dict[str, str]:
    """The environment of the README's sp8192 command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(l for l in readme.splitlines() if l.startswith("VOCAB_SIZE=8192 "))
    return dict(w.split("=", 1) for w in shlex.split(line) if re.match(r"^[A-Z0-9_]+=", w))


@pytest.mark.parametrize("preset", ["default", "sp8192"])
def test_preset_fills_the_budget(preset, tmp_path):
    env = {} if preset == "default" else readme_preset()
    assert env == {} or env["VOCAB_SIZE"] == "8192"
    h = load_hparams({**env, "QUANT_METHOD": "rtn"})  # GPTQ's time at this size: tools/requant.py standin (README)
    check_config(h, 8)
    torch.manual_seed(0)
    model = GPT(h)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.distributions.StudentT(5.0).sample(p.shape))
        model.renorm_()
        model.emb.weight.mul_(0.5)
    n = sum(p.numel() for p in model.parameters())
    code = len((ROOT / "train_gpt.py").read_bytes())
    lines = []
    t0 = time.perf_counter()
    size = write_artifact(model, str(tmp_path / "m.ptz"), h, int(SIZE_LIMIT * (1 - train_gpt.BUDGET_WINDOW)) - code,
                          SIZE_LIMIT - code, None, lines.append)
    print(f"{preset}: {n:,} parameters, {lines[0]}; total {code + size:,} in {time.perf_counter() - t0:.1f}s")
    assert 15_920_000 <= code + size <= SIZE_LIMIT
    assert size / n <= 0.45
