"""UnitNorm: exact math and gradients, bf16 in and out, and no graph breaks or precision loss under torch.compile."""
import math

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from train_gpt import GPT, UnitNorm, load_hparams, unit

TINY = {"VOCAB_SIZE": "512", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
        "TRAIN_SEQ_LEN": "64"}


def reference(x):
    return x / x.norm(dim=-1, keepdim=True)


def bf16_ulp(value: float) -> float:
    """Spacing of bf16 numbers (8 significant bits) at |value|."""
    return 2.0 ** (math.floor(math.log2(abs(value))) - 7)


def rows(*shape, dtype=torch.float64):
    """Random rows with norms spread over six orders of magnitude."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return (x * 10.0 ** torch.empty(*shape[:-1], 1, dtype=torch.float64).uniform_(-3, 3, generator=g)).to(dtype)


def test_gradcheck_float64():
    # UnitNorm does its math in fp32 even for float64 input (x.float()), so the finite differences see fp32 rounding
    # (~1e-7 relative): eps=1e-3 keeps that noise near 1e-4, far below the O(1) error a wrong backward would give.
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(unit, (x,), eps=1e-3, atol=1e-3, rtol=1e-3)


def test_matches_float64_autograd_in_fp32():
    x64 = rows(16, 64).requires_grad_()
    g64 = torch.randn(16, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = reference(x64)
    (want_grad,) = torch.autograd.grad(want, x64, g64)
    x = x64.detach().float().requires_grad_()
    y = UnitNorm.apply(x)
    y.backward(g64.float())
    assert y.dtype == x.grad.dtype == torch.float32
    assert torch.allclose(y.double(), want, rtol=0, atol=1e-6)
    scale = want_grad.abs().amax(-1, keepdim=True)  # gradients scale like 1/|x|: compare row-relative
    assert ((x.grad.double() - want_grad).abs() / scale).max() < 1e-5
    assert ((y.double().norm(dim=-1) - 1).abs() < 1e-6).all()


def test_bf16_in_bf16_out():
    x = rows(16, 64, dtype=torch.bfloat16).requires_grad_()
    y = unit(x)
    y.backward(torch.ones_like(y))
    assert y.dtype == x.grad.dtype == torch.bfloat16
    want = reference(x.detach().double())
    # fp32 math (error ~1e-7), then one rounding to bf16: half a bf16 ulp is at most 2^-8 of the value
    bound = 2.0 ** -8 + 1e-6
    assert ((y.double() - want).abs() <= bound * want.abs()).all()
    assert ((y.double().norm(dim=-1) - 1).abs() <= bound).all()


def test_block_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = GPT(load_hparams(TINY))
    block, cos, sin = model.blocks[0], model.cos[:16], model.sin[:16]
    x = F.normalize(torch.randn(2, 16, 64), dim=-1).requires_grad_()
    explained = torch._dynamo.explain(block)(x, cos, sin)
    print(f"explain: graphs={explained.graph_count} graph_breaks={explained.graph_break_count}")
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")  # traces forward and backward
    compiled(x, cos, sin).square().sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    print(f"compiled Block fwd+bwd: graph_break counters={dict(counters['graph_break'])} "
          f"unique_graphs={counters['stats']['unique_graphs']}")
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1
    x.grad = None
    block.zero_grad()
    block(x, cos, sin).square().sum().backward()
    want = [x.grad] + [p.grad for p in block.parameters()]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


STEPS, SEGMENT, ALPHA = 90, 10, 0.05


def segment(norm):
    def run(h, xs):
        for i in range(xs.size(0)):
            h = norm(h + ALPHA * (norm(xs[i]) - h))
        return h
    return run


def chain(xs, norm, run=None):
    """STEPS normalize-and-interpolate steps h <- norm(h + a (norm(x_i) - h)), SEGMENT steps per call of run. A
    compiled run is one graph of SEGMENT steps: a single 90-step graph takes minutes to compile on 2 CPU cores."""
    run = run or segment(norm)
    h = norm(xs[0])
    for i in range(1, STEPS + 1, SEGMENT):
        h = run(h, xs[i:i + SEGMENT])
    return h


def test_bf16_chain_compiled_matches_eager():
    xs = torch.randn(STEPS + 1, 16, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    exact = chain(xs.double(), reference)  # same bf16 inputs, float64 math
    ulp = bf16_ulp(exact.abs().max().item())
    errors = {}
    for name, norm in (("unit", unit), ("F.normalize", lambda t: F.normalize(t, dim=-1))):
        torch._dynamo.reset()
        counters.clear()
        eager, comp = chain(xs, norm), chain(xs, norm, torch.compile(segment(norm), fullgraph=True))
        assert comp.dtype == eager.dtype == torch.bfloat16
        assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1
        errors[name] = [(r.double() - exact).abs().max().item() / ulp for r in (eager, comp)]
        errors[name].append((comp.double() - eager.double()).abs().max().item() / ulp)
        print(f"{name}: {STEPS}-step bf16 chain, max error in bf16 ulps of max|h| ({ulp:.2e}): "
              f"eager vs fp64 {errors[name][0]:.2f}, compiled vs fp64 {errors[name][1]:.2f}, "
              f"compiled vs eager {errors[name][2]:.2f}")
    eager_err, comp_err, diff = errors["unit"]
    # Each step rounds h + a(u - h) and the normalized output to bf16 (about one ulp per step, where the compiled
    # graph may keep fp32 instead). The chain hardly contracts these differences ((1 - a)/|h + a(u - h)| is ~0.999
    # for u nearly orthogonal to h), so independent per-step roundings add up like a random walk: about
    # sqrt(STEPS) ulps; allow twice that. A worst-case linear bound (STEPS ulps) would test nothing.
    assert diff <= 2 * math.sqrt(STEPS)
    assert comp_err <= eager_err + 1  # compiling loses no precision relative to eager bf16
