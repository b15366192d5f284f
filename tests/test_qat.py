"""Quantization-aware training and the NVFP4-style format: QAT's forward uses exactly the rows the artifact loads,
gradients pass straight through to the weights, no graph break, and NVFP4 values sit on the E2M1 grid of their
block's E4M3 scale."""
import copy

import pytest
import torch
import torch.nn.functional as F

from train_gpt import (E2M1, GPT, dequantize, fake_quant, load_hparams, nvfp4, nvfp4_values, quantized_tensors)

TINY = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "32",
        "VOCAB_SIZE": "256"}


def model_for(method, seed=0):
    h = load_hparams({**TINY, "QUANT_METHOD": method})
    torch.manual_seed(seed)
    model = GPT(h)
    with torch.no_grad():  # heavy-tailed rows, like trained ones
        for p in model.matrices():
            p.copy_(torch.distributions.StudentT(4.0).sample(p.shape))
        model.renorm_()
    return h, model


@pytest.mark.parametrize("method,lam", [("rtn", 0.3), ("rtn", 0.9), ("nvfp4", 0.0)])
def test_qat_forward_is_the_round_trip(method, lam):
    h, model = model_for(method)
    loaded = dequantize(quantized_tensors(model, h, lam, None))
    params = dict(model.named_parameters())
    for p in model.matrices():
        name = next(n for n, q in params.items() if q is p)
        assert torch.equal(fake_quant(p.detach(), method, lam), loaded[name]), name
    # the whole forward: QAT on, against a copy whose block matrices are the artifact's (the embedding is not QAT'd)
    x = torch.randint(0, 256, (2, 32))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if p.ndim == 2 and name != "emb.weight":
                p.copy_(loaded[name])
    for block in model.blocks:
        block.qat = (method, lam)
    with torch.no_grad():
        assert torch.equal(model(x, x, reduction="none"), twin(x, x, reduction="none"))


def test_gradients_pass_straight_through():
    h, model = model_for("rtn")
    lam, x = 0.9, torch.randint(0, 256, (2, 32))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.matrices():
            p.copy_(fake_quant(p, "rtn", lam))
    for block in model.blocks:
        block.qat = ("rtn", lam)
    model(x, x).backward()
    twin(x, x).backward()
    for p, q in zip(model.matrices(), twin.matrices()):
        assert p.grad is not None and p.grad.abs().sum() > 0
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)  # d loss / d w = d loss / d w_q
    assert not torch.equal(model.blocks[0].q.detach(), twin.blocks[0].q.detach())  # the weights stay continuous


def test_qat_block_has_no_graph_break():
    h, model = model_for("rtn")
    block = model.blocks[0]
    x = F.normalize(torch.randn(2, 16, 64), dim=-1)
    for qat in (("rtn", 0.5), ("nvfp4", 0.0)):
        block.qat = qat
        torch._dynamo.reset()
        explained = torch._dynamo.explain(block)(x, model.cos[:16], model.sin[:16])
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (qat, explained.break_reasons)


def test_nvfp4_values_on_the_grid_of_their_block_scale():
    torch.manual_seed(0)
    w = torch.distributions.StudentT(4.0).sample((48, 64)) * 0.01
    codes, scale8, tscale = nvfp4(w)
    assert codes.dtype == torch.int8 and 0 <= codes.min() and codes.max() <= 15
    assert scale8.dtype == torch.uint8 and scale8.shape == (48, 4) and tscale.dtype == torch.float32
    v = nvfp4_values(codes, scale8, tscale)
    s = (scale8.view(torch.float8_e4m3fn).float() * tscale).repeat_interleave(16, dim=1)
    grid = torch.tensor(E2M1)
    mags = (v.abs() / s)
    assert torch.isclose(mags[..., None], grid, atol=1e-5).any(-1).all()  # every value is grid x its block scale
    # round to nearest: the error is at most half the local grid spacing (values past 6 clip to 6)
    x = (w / s).abs().clamp(max=6)
    spacing = torch.where(x < 2, 0.5, torch.where(x < 4, 1.0, 2.0))
    assert ((x - mags).abs() <= spacing / 2 + 1e-5).all()
    assert (torch.sign(v) == torch.sign(w))[v != 0].all()
    blocks = w.abs().view(48, 4, 16).amax(-1)  # the block maximum maps near 6 (E4M3 rounds the scale)
    assert ((blocks / (scale8.view(torch.float8_e4m3fn).float() * tscale) - 6).abs() <= 6 * 2 ** -3).all()
