"""tools/requant.py on a real tiny run (conftest's cpu_runs: the last seed's final_model.pt): both methods exported
and scored within 0.5% below the budget; the stand-in export; one line for a wrong model."""
import re
import subprocess
import sys

from _logs import REPO

REQUANT = [sys.executable, str(REPO / "tools" / "requant.py")]


def test_table_at_equal_bytes(cpu_runs):
    run = cpu_runs[-1]
    model = run["pt"]
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
    model = run["pt"]
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


def test_lqer_round_trip_and_equal_bytes():
    """gptq_lqer in process on a tiny random model with anisotropic Hessians: the side frame's factors reload onto
    exactly the matrices chosen, lower their Hessian-weighted error, leave the rest as plain GPTQ loads them, and the
    whole artifact, side frame included, lands in the budget window."""
    import requant
    import torch
    import torch.nn.functional as F

    import train_gpt as T
    h = T.load_hparams({"NUM_LAYERS": "1", "MODEL_DIM": "64", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
                        "VOCAB_SIZE": "256", "MLP_MULT": "2"})
    torch.manual_seed(0)
    model = T.GPT(h)
    model.renorm_()
    hessians = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            d = p.size(0) if name.rpartition(".")[2] in T.INPUT_ROWS else p.size(1)
            x = torch.randn(4 * d, d) * torch.logspace(0, 1, d)
            hessians.setdefault(T.hessian_name(name), x.T @ x)
    lam = 0.5
    tensors = T.quantized_tensors(model, h, lam, hessians)
    meta = {"method": "gptq", "step": lam, "embed_step": lam * h.embed_step_ratio}
    base, info = T.pack_artifact(tensors, meta), {}
    side = requant.lqer_side(model, h, tensors, meta, hessians, 4, 2, info)
    assert info["bytes"] == len(side) and len(info["names"]) == 2
    plain = T.dequantize(T.unpack_artifact(base)[0])
    fixed = T.dequantize(requant.lqer_unpack(base + side)[0])
    named = dict(model.named_parameters())
    for name, p in named.items():
        if p.ndim < 2:
            continue
        w = p.detach().float() if name == "emb.weight" else F.normalize(p.detach().float(), dim=-1)

        def energy(W):
            E = (w - W).double()
            E = E.T if name.rpartition(".")[2] in T.INPUT_ROWS else E
            return ((E @ hessians[T.hessian_name(name)].double()) * E).sum().item()
        if name in info["names"]:
            assert energy(fixed[name]) < 0.97 * energy(plain[name]), name
        else:
            assert torch.equal(fixed[name], plain[name]), name
    budget = int(0.6 * sum(p.numel() for p in model.parameters()))
    lo = int(budget * (1 - T.BUDGET_WINDOW))
    data, what, info = requant.lqer_export(model, h, lo, budget, hessians, 4, 2)
    assert lo <= len(data) <= budget, what
    T.unpack_artifact(data[:-info["bytes"]])  # the train_gpt.py artifact, then exactly the side frame
    assert len(requant.lqer_unpack(data)[0]) == len(T.unpack_artifact(data[:-info["bytes"]])[0])
    assert T.pack_artifact is not None and T.pack_artifact.__name__ == "pack_artifact"  # unwrapped again
