"""NORM=approx (anGPT): the constant factors bring unit inputs to unit outputs, hidden states stay near norm 1 at
initialisation and after 50 training steps, every row stays within norm 1 after every step, and the artifact (rows
with their steps) reloads the dequantized model exactly."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import train_gpt
from train_gpt import (GPT, TokenStream, dequantize, load_artifact, load_hparams, make_optimizers, pack_artifact,
                       quantized_tensors, shard_files)

SHAPE = {"NUM_LAYERS": "4", "MODEL_DIM": "128", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64"}
# hidden-state norms entering and leaving every block, at initialisation and after 50 steps (measured: 0.97-1.02 and
# 0.40-1.06; after training they fall by about 10% per block: the sublayer outputs shrink as rows move inside the ball)
BANDS = ((0.95, 1.05), (0.3, 1.1))


def block_norms(model, x, y):
    """Per block: (min, max) of the hidden-state norms entering it and leaving it, over every position."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, inp, out: seen.append(
        (inp[0].norm(dim=-1).aminmax(), out.norm(dim=-1).aminmax()))) for b in model.blocks]
    with torch.no_grad():
        model(x, y)
    for hook in hooks:
        hook.remove()
    lo = min(min(a.min.item(), b.min.item()) for a, b in seen)
    hi = max(max(a.max.item(), b.max.item()) for a, b in seen)
    return lo, hi


@pytest.fixture(scope="module")
def trained(tiny_shards):
    h = load_hparams({**SHAPE, **tiny_shards.env, "NORM": "approx"})
    torch.manual_seed(0)
    model = GPT(h)
    stream = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin"), h.vocab_size)
    probe = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_val_*.bin"), h.vocab_size).batch(
        4, h.train_seq_len, 0, 1, "cpu")
    at_init = block_norms(model, *probe)
    optimizers = make_optimizers(model, h)
    losses, worst_row = [], 0.0
    for _ in range(50):
        loss = model(*stream.batch(8, h.train_seq_len, 0, 1, "cpu"))
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.renorm_()
        worst_row = max(worst_row, max(p.norm(dim=-1).max().item() for p in model.matrices()))
        losses.append(loss.item())
    return SimpleNamespace(h=h, model=model, probe=probe, at_init=at_init, after=block_norms(model, *probe),
                           losses=losses, worst_row=worst_row)


def test_factors_bring_unit_inputs_to_unit_outputs():
    """For a unit input and unit rows drawn at random, each scaled sublayer output has norm close to 1 on average."""
    for slope in ("0.5", "0"):
        h = load_hparams({**SHAPE, "NORM": "approx", "LEAKY_SLOPE": slope, "MODEL_DIM": "512", "NUM_HEADS": "8"})
        torch.manual_seed(1)
        block = GPT(h).blocks[0]
        x = F.normalize(torch.randn(4096, 512), dim=-1)
        with torch.no_grad():
            v = block.scaled(block.mm(x, "v"), "v").view(4096, h.num_kv_heads, -1)
            hidden = block.mlp_hidden(x)
            heads = F.normalize(torch.randn(4096, 512), dim=-1) * h.num_heads ** 0.5  # H unit heads side by side
            o = block.scaled(block.mm(heads, "o"), "o")
            down = block.mm(F.normalize(torch.randn(4096, hidden.size(-1)), dim=-1), "down")
        for name, t in (("v", v), ("act", hidden), ("o", o), ("down", down)):
            mean_sq = t.square().sum(-1).mean().item()
            assert abs(mean_sq - 1) < 0.05, (slope, name, mean_sq)


def test_hidden_norms_stay_in_band_and_rows_within_one(trained):
    print(f"hidden-state norms in and out of every block: at init {trained.at_init[0]:.4f}-{trained.at_init[1]:.4f}, "
          f"after 50 steps {trained.after[0]:.4f}-{trained.after[1]:.4f}; largest row norm after any step "
          f"{trained.worst_row:.7f}; loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f}")
    assert trained.losses[-1] < trained.losses[0] - 1
    for (lo, hi), (low, high) in zip((trained.at_init, trained.after), BANDS):
        assert low <= lo <= hi <= high
    assert trained.worst_row <= 1 + 1e-5
    norms = torch.cat([p.norm(dim=-1) for p in trained.model.matrices()])
    assert (norms < 1 - 1e-3).any()  # rows inside the ball: the constraint is an inequality, not nGPT's sphere


def test_artifact_keeps_row_norms_and_reloads_exactly(trained, tmp_path):
    tensors = quantized_tensors(trained.model, trained.h, 0.3, None)
    roles = {(name, role) for name, role, _ in tensors}
    assert ("blocks.0.up", "rows") in roles and ("blocks.0.up", "step") in roles
    assert not any(role == "unit" for _, role, _ in tensors)
    path = tmp_path / "final_model.ptz"
    path.write_bytes(pack_artifact(tensors))
    torch.manual_seed(5)
    fresh = GPT(trained.h)
    fresh.load_state_dict(load_artifact(str(path)), strict=True)
    in_memory = copy.deepcopy(trained.model)
    in_memory.load_state_dict(dequantize(tensors))
    with torch.no_grad():
        assert torch.equal(fresh(*trained.probe, reduction="none"), in_memory(*trained.probe, reduction="none"))
        for p, q in zip(fresh.matrices(), trained.model.matrices()):  # the norms survive (within the step)
            assert torch.allclose(p.norm(dim=-1), q.norm(dim=-1), atol=0.05)


def test_bad_norm_settings_are_rejected():
    for env, message in (({"NORM": "rms"}, "NORM='rms'"), ({"NORM": "approx", "SPHERE_OPT": "wn"}, "NORM='approx'")):
        with pytest.raises(ValueError, match=message):
            train_gpt.check_config(load_hparams({**SHAPE, **env}), 1)
