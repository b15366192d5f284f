"""GPT and its optimizers: unit rows and hidden states after training steps, config checks, Muon's orthogonalize."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_gpt import (HPARAMS, GPT, TokenStream, check_config, load_hparams, make_optimizers, orthogonalize,
                       shard_files)

TINY = {"VOCAB_SIZE": "512", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
        "TRAIN_SEQ_LEN": "64"}


def row_norm_error(p):
    return (p.detach().norm(dim=-1) - 1).abs().max().item()


def test_unit_rows_and_hidden_states_after_training_steps(tiny_shards):
    h = load_hparams(TINY)
    torch.manual_seed(0)
    model = GPT(h)
    matrices = model.matrices()  # every 2-D block weight, each with rows along the model dim
    assert [id(p) for p in matrices] == [id(p) for b in model.blocks for p in b.parameters() if p.ndim == 2]
    assert all(p.size(-1) == h.model_dim for p in matrices) and len(matrices) == 6 * h.num_layers
    optimizers = make_optimizers(model, h)
    stream = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin"), h.vocab_size)
    for _ in range(3):
        x, y = stream.batch(4, h.train_seq_len, 0, 1, "cpu")
        model(x, y).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        off_sphere = max(map(row_norm_error, matrices))
        model.renorm_()
        on_sphere = max(map(row_norm_error, matrices))
        print(f"max |row norm - 1|: after the optimizer step {off_sphere:.3g}, after renorm_ {on_sphere:.3g}")
        assert off_sphere > 1e-3 and on_sphere < 1e-5

    states = []
    hooks = [hook for b in model.blocks for hook in (
        b.register_forward_pre_hook(lambda _, args: states.append(args[0].detach())),
        b.register_forward_hook(lambda _, args, out: states.append(out.detach())))]
    with torch.no_grad():
        model(x, y)
    for hook in hooks:
        hook.remove()
    assert len(states) == 2 * h.num_layers
    assert max(row_norm_error(s) for s in states) < 1e-5


@pytest.mark.parametrize("env, world, message", [
    ({"MODEL_DIM": "60", "NUM_HEADS": "8"}, 1, "MODEL_DIM=60 is not divisible by NUM_HEADS=8"),
    ({"NUM_HEADS": "0"}, 1, "MODEL_DIM=512 is not divisible by NUM_HEADS=0"),
    ({"NUM_HEADS": "4", "NUM_KV_HEADS": "3"}, 1, "NUM_HEADS=4 is not divisible by NUM_KV_HEADS=3"),
    ({}, 3, "WORLD_SIZE=3 does not divide 8"),
    ({"TRAIN_BATCH_TOKENS": str(786432 + 2048)}, 8, "TRAIN_BATCH_TOKENS=788480 does not split into whole sequences"),
    ({"TRAIN_BATCH_TOKENS": "4095", "TRAIN_SEQ_LEN": "64"}, 1, "does not split into whole sequences"),
])
def test_check_config_rejects(env, world, message):
    with pytest.raises(ValueError, match=message):
        check_config(load_hparams(env), world)


def test_check_config_names_every_problem_at_once():
    """A stopped pod run names every setting to fix, in the table's order, in one line."""
    with pytest.raises(ValueError) as e:
        check_config(load_hparams({"MODEL_DIM": "60", "NUM_HEADS": "8", "NUM_KV_HEADS": "3", "MIN_LR": "2"}), 3)
    assert str(e.value).split("; ") == ["WORLD_SIZE=3 does not divide 8", "MODEL_DIM=60 is not divisible by NUM_HEADS=8",
                                        "NUM_HEADS=8 is not divisible by NUM_KV_HEADS=3",
                                        "ROPE_DIMS=7 must be even and at most the head dim 7", "MIN_LR=2.0 must be in [0, 1]"]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_check_config_accepts_defaults(world):
    check_config(load_hparams({}), world)


@pytest.mark.parametrize("name, raw", [("ITERATIONS", "ten"), ("MATRIX_LR", "fast"), ("NUM_LAYERS", "2.5")])
def test_load_hparams_names_the_bad_variable(name, raw):
    with pytest.raises(ValueError, match=f"{name}='{raw}' is not a valid {type(HPARAMS[name]).__name__}"):
        load_hparams({name: raw})


@pytest.mark.parametrize("shape", [(256, 64), (64, 256), (192, 64)])
def test_orthogonalize_is_nearly_semi_orthogonal(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = orthogonalize(g, 5)
    assert out.shape == g.shape
    sv = torch.linalg.svdvals(out.float())
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh  # the exact nearest semi-orthogonal matrix
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), polar.flatten(), dim=0).item()
    print(f"{shape}: singular values in [{sv.min():.3f}, {sv.max():.3f}], cosine to the polar factor {cos:.3f}")
    assert 0.5 < sv.min() and sv.max() < 1.5
    assert cos > 0.9


def test_flash_attention_3_only_when_it_registers_torch_ops():
    """An FA3 build without its torch ops would break torch.compile's full graph: the script must fall back to SDPA."""
    probe = """
import sys, types, torch
if sys.argv[1] != "old":  # the Python interface's custom op, or only the C++ op it calls
    op = "_flash_attn_forward" if sys.argv[1] == "registered" else "fwd"
    @torch.library.custom_op(f"flash_attn_3::{op}", mutates_args=())
    def fwd(x: torch.Tensor) -> torch.Tensor:
        return x.clone()
fake = types.ModuleType("flash_attn_interface")
fake.flash_attn_func = print
sys.modules["flash_attn_interface"] = fake
import train_gpt
print(train_gpt.flash_attn_func is print, train_gpt.FA3_OPS)
"""
    root = Path(__file__).resolve().parents[1]
    for mode, expected in (("old", "False []"), ("registered", "True ['_flash_attn_forward']"),
                           ("cpp_only", "True ['fwd']")):
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, cwd=root)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected, mode
