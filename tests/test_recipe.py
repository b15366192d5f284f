"""The recipe's knobs: the loss at initialisation, partial RoPE frequencies, the optimizer on the sphere (retraction
or weight normalisation with decoupled decay), momentum warm-up, the MLP activation's dtype, the shard prefetch."""
import math
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_gpt
from train_gpt import (GPT, Muon, TokenStream, check_config, load_hparams, load_tokens, make_optimizers, rope_tables,
                       set_schedule, shard_files)

PROXY_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "proxy_sp1024" / "fineweb_val_000000.bin"
TINY = {"VOCAB_SIZE": "512", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
        "TRAIN_SEQ_LEN": "64"}


def test_initial_loss_at_the_default_shape_is_ln_vocab():
    """EMBED_INIT_STD small: the initial model predicts nearly uniformly, instead of its own input token."""
    if not PROXY_VAL.exists():
        pytest.skip(f"{PROXY_VAL} not present")
    h = load_hparams({})
    torch.manual_seed(0)
    model = GPT(h)
    tokens = load_tokens(str(PROXY_VAL), h.vocab_size)[:4 * 1025].long().view(4, 1025)
    with torch.no_grad():
        loss = model(tokens[:, :-1], tokens[:, 1:]).item()
    print(f"initial loss {loss:.4f} at the default shape; ln({h.vocab_size}) = {math.log(h.vocab_size):.4f}")
    assert abs(loss - math.log(h.vocab_size)) < 0.1


def test_partial_rope_keeps_long_wavelengths():
    h = load_hparams({"ROPE_DIMS": "16", "ROPE_BASE": "10000"})
    cos, sin = rope_tables(h)
    freqs = torch.atan2(sin[1, 0], cos[1, 0])  # the angle advanced per position, one per rotated pair
    assert cos.shape == (h.train_seq_len, 1, 8)
    longest = (2 * math.pi / freqs.min()).item()
    print(f"ROPE_DIMS=16: wavelengths {2 * math.pi / freqs.max().item():.1f} .. {longest:.0f} tokens")
    assert longest >= 1000


def test_full_rope_tables_are_unchanged():
    """ROPE_DIMS equal to the head dim gives the tables the script had before partial RoPE was fixed."""
    for env in ({}, {"ROPE_DIMS": "64"}):
        h = load_hparams(env)
        hd = h.model_dim // h.num_heads
        freqs = h.rope_base ** (-torch.arange(0, hd, 2).float() / hd)
        angles = torch.outer(torch.arange(h.train_seq_len).float(), freqs)
        cos, sin = rope_tables(h)
        assert torch.equal(cos, angles.cos()[:, None, :]) and torch.equal(sin, angles.sin()[:, None, :])


def test_qk_gain_sets_the_attention_temperature():
    for gain in (1.0, 5.0):
        block = GPT(load_hparams({**TINY, "QK_GAIN_INIT": str(gain)})).blocks[0]
        assert torch.allclose(block.q_gain * block.scale, torch.full_like(block.q_gain, gain))


def train_steps(h, tiny_shards, steps=3):
    torch.manual_seed(0)
    model = GPT(h)
    optimizers = make_optimizers(model, h)
    stream = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin"), h.vocab_size)
    for step in range(steps):
        x, y = stream.batch(4, h.train_seq_len, 0, 1, "cpu")
        model(x, y).backward()
        set_schedule(optimizers, h, step, 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model, x, y


def test_weight_normalisation_uses_unit_rows_of_free_weights(tiny_shards):
    """SPHERE_OPT=wn: the stored rows drift off the sphere, the forward sees them normalized, and the model is the
    same function after its rows are renormalized (as the export does)."""
    h = load_hparams({**TINY, **tiny_shards.env, "SPHERE_OPT": "wn", "MUON_WD": "0.04"})
    model, x, y = train_steps(h, tiny_shards)
    norms = torch.cat([p.detach().norm(dim=-1) for p in model.matrices()])
    print(f"wn: stored row norms after 3 steps in [{norms.min():.4f}, {norms.max():.4f}]")
    assert (norms - 1).abs().max() > 1e-3
    with torch.no_grad():
        before = model(x, y).item()
        model.renorm_()
        after = model(x, y).item()
    assert abs(before - after) < 1e-5


def test_muon_weight_decay_is_decoupled():
    """A zero gradient gives a zero orthogonalized update: what is left is p *= 1 - lr * wd."""
    p = torch.nn.Parameter(torch.randn(8, 4))
    start = p.detach().clone()
    p.grad = torch.zeros_like(p)
    Muon([p], lr=0.1, momentum=0.9, steps=5, weight_decay=0.5).step()
    assert torch.allclose(p.detach(), start * (1 - 0.1 * 0.5))


def test_momentum_warms_up_linearly():
    h = load_hparams({**TINY, "MUON_MOMENTUM_WARMUP_STEPS": "100", "MUON_MOMENTUM_WARMUP_START": "0.85",
                      "MUON_MOMENTUM": "0.95"})
    optimizers = make_optimizers(GPT(h), h)
    seen = []
    for step in (0, 50, 100, 1000):
        set_schedule(optimizers, h, step, 0.5)
        seen.append(optimizers[0].param_groups[0]["momentum"])
        assert all(g["lr"] == 0.5 * g["base_lr"] for o in optimizers for g in o.param_groups)
    assert seen == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert "momentum" not in optimizers[1].param_groups[0]  # Adam's groups are left alone


@pytest.mark.parametrize("env, message", [
    ({"SPHERE_OPT": "riemann"}, "SPHERE_OPT='riemann' must be 'retract' or 'wn'"),
    ({"MUON_WD": "-0.04"}, "MUON_WD=-0.04 must be >= 0"),
    ({"LEAKY_SLOPE": "-0.5"}, r"LEAKY_SLOPE=-0.5 must be in \[0, 1\)"),
])
def test_check_config_rejects_bad_recipe_options(env, message):
    with pytest.raises(ValueError, match=message):
        check_config(load_hparams(env), 1)


def test_mlp_hidden_stays_in_the_matmul_dtype_under_autocast():
    """The per-unit gain (fp32) must not promote the widest activation of the model to fp32."""
    h = load_hparams({**TINY, "LEAKY_SLOPE": "0.5"})
    block = GPT(h).blocks[0]
    x = F.normalize(torch.randn(2, 8, h.model_dim), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = block.mlp_hidden(x)
    assert hidden.dtype == torch.bfloat16
    u = F.linear(x, block.up.detach())
    assert torch.allclose(block.mlp_hidden(x), F.leaky_relu(u, 0.5).square(), atol=1e-6)


def test_next_shard_is_read_in_the_background(tiny_shards, monkeypatch):
    """While shard i is consumed, shard i+1 is already being read, by another thread than the training loop's."""
    files = shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin") * 3
    reads, real = [], train_gpt.load_shard

    def recording(path, vocab_size=65536):
        reads.append(threading.current_thread() is threading.main_thread())
        return real(path, vocab_size)

    monkeypatch.setattr(train_gpt, "load_shard", recording)
    stream = TokenStream(files, tiny_shards.vocab_size)
    stream.next.result()
    assert len(reads) == 2 and not any(reads)  # the current shard and the next one, both off the main thread
    n = len(stream.tokens)
    first = stream.take(n)
    stream.next.result()
    assert len(reads) == 2  # nothing read yet: the stream has not needed the next shard
    stream.take(1)
    stream.next.result()
    assert len(reads) == 3 and not any(reads) and torch.equal(first, stream.tokens)


def test_renorm_is_a_few_kernels_not_two_per_matrix():
    """renorm_ at the default shape (72 matrices): one cat, one norm, one foreach divide, not a norm and a divide
    per matrix (144 kernels)."""
    from torch.profiler import profile
    model = GPT(load_hparams({}))
    with torch.no_grad():
        for p in model.matrices():
            p.mul_(1.5)
    with profile() as prof:
        model.renorm_()
    metadata_only = {"aten::view", "aten::split_with_sizes", "aten::split"}
    ops = [e.key for e in prof.events() if e.key.startswith("aten::") and e.cpu_parent is None]
    kernels = [op for op in ops if op not in metadata_only]
    print(f"renorm_ over {len(model.matrices())} matrices: {kernels}")
    assert len(kernels) <= 4
    assert max((p.norm(dim=-1) - 1).abs().max().item() for p in model.matrices()) < 1e-5


def test_warm_down_ends_at_min_lr():
    """The default LR_WARMUP_STEPS=20 rises linearly to 1 (1/20 at step 0, 1 from step 19); MIN_LR: the warm-down
    falls linearly from 1 to MIN_LR (0: to 0), by steps or by the capped clock."""
    from types import SimpleNamespace

    import train_gpt
    for floor in (0.0, 0.1):
        h = train_gpt.load_hparams({"ITERATIONS": "100", "WARMDOWN_ITERS": "40", "MIN_LR": str(floor)})
        run = SimpleNamespace(h=h, cap_ms=0.0)
        mul = [train_gpt.Run.lr_mul(run, step, 0.0) for step in (0, 9, 19, 60, 80, 100)]
        assert mul == pytest.approx([0.05, 0.5, 1.0, 1.0, floor + (1 - floor) * 0.5, floor])
        capped = SimpleNamespace(h=h, cap_ms=1000.0)  # 10 ms a step: 40 steps of warm-down = the last 400 ms
        assert train_gpt.Run.lr_mul(capped, 80, 800.0) == pytest.approx(floor + (1 - floor) * 0.5)
        assert train_gpt.Run.lr_mul(capped, 100, 1000.0) == pytest.approx(floor)
    with pytest.raises(ValueError, match="MIN_LR"):
        train_gpt.check_config(train_gpt.load_hparams({"MIN_LR": "1.5"}), 1)
