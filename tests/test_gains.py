"""The leaders' training gains kept on the sphere (issue 23): the BOS-masked SmearGate in training, evaluation and
TTT, the attention output gate (both through the whole pipeline under the GPU's numerics: test_numerics' 2-rank
run; the LR warm-up's schedule: test_recipe). Depth recurrence, XSA and the logit softcap were measured and removed
(ablations/README.md)."""

import pytest
import torch

import test_ttt as tt
from train_gpt import GPT, check_config, load_hparams

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
SMALL = dict(VOCAB_SIZE="64", NUM_LAYERS="3", MODEL_DIM="32", NUM_HEADS="2", NUM_KV_HEADS="1", TRAIN_SEQ_LEN="32",
             EVAL_STRIDE="32")


def hp(**env):
    h = load_hparams({**SMALL, **{k: str(v) for k, v in env.items()}})
    check_config(h, 1)
    return h


def test_new_switches_add_no_matrix_and_start_transparent():
    """SMEAR and ATTN_GATE add only 1-D tensors (fp16 gains in the artifact) and start transparent: the model with
    SMEAR=1 ATTN_GATE=1 gives the plain model's loss at init (sigmoid's 2 x 0.5 = 1, a zero share)."""
    torch.manual_seed(0)
    plain = GPT(hp(SMEAR=0))
    torch.manual_seed(0)
    gated = GPT(hp(SMEAR=1, ATTN_GATE=1))
    new = dict(gated.named_parameters()).keys() - dict(plain.named_parameters()).keys()
    assert new == {"smear_gate", "smear_weight"} | {f"blocks.{i}.attn_gate" for i in range(3)}
    assert all(p.ndim < 2 for n, p in gated.named_parameters() if n in new)
    x = torch.randint(0, 64, (2, 32))
    assert gated(x, x).item() == pytest.approx(plain(x, x).item(), abs=1e-6)
    with pytest.raises(ValueError, match="MODEL_DIM >= 12"):
        hp(SMEAR=1, MODEL_DIM=8, NUM_HEADS=1, NUM_KV_HEADS=1)


def smear_model():
    torch.manual_seed(0)
    model = GPT(hp(SMEAR=1))
    with torch.no_grad():  # a trained-looking gate: a real share of the previous token
        model.emb.weight.normal_(0, 0.5)
        model.smear_weight.fill_(0.8)
        model.smear_gate.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("mode", ["train_bf16", "eval_inference_bf16", "eval_fp32"])
def test_smear_never_crosses_a_bos(mode):
    """Changing the token before a BOS changes nothing at or after the BOS in the first block's input, as training
    (grad, autocast) and evaluation (inference mode) run it; changing an ordinary token does change its successor."""
    model = smear_model()
    x = torch.randint(2, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    x[:, 10] = model.bos
    x2 = x.clone()
    x2[:, 9] = (x[:, 9] + 1 - 2) % 62 + 2  # another non-BOS token
    x3 = x.clone()
    x3[:, 20] = (x[:, 20] + 1 - 2) % 62 + 2

    def first_input(idx):
        model.train(mode.startswith("train"))
        if mode == "train_bf16":
            with torch.autocast(**BF16):
                return model.embed(idx).float()
        with torch.inference_mode(), torch.autocast(**BF16, enabled=mode != "eval_fp32"):
            return model.embed(idx).float()
    a, b, c = first_input(x), first_input(x2), first_input(x3)
    assert torch.equal(a[:, 10:], b[:, 10:])  # the BOS and everything after it: bit for bit
    assert not torch.allclose(a[:, 9], b[:, 9])
    assert not torch.allclose(a[:, 21], c[:, 21])  # the smear is on: an ordinary token reaches the next one
    assert torch.equal(a[:, 22:], c[:, 22:]) and torch.equal(a[:, :20], c[:, :20])


def test_smear_never_crosses_a_bos_in_ttt():
    """Score-first TTT with SMEAR=1: the scores of a document do not change when the last token of the document
    before it changes; they do when a token of its own changes (the smear and the adapters are active)."""
    h, model = tt.tiny(SMEAR=1)
    with torch.no_grad():
        model.smear_weight.fill_(0.8)
        model.smear_gate.normal_(0, 1.0)
    tokens = tt.stream()
    starts = (tokens == tt.BOS).nonzero().flatten().tolist()
    bos = starts[3]
    other = tokens.clone()
    other[bos - 1] = (tokens[bos - 1] + 1 - 2) % (tt.VOCAB - 2) + 2
    _, _, _, base = tt.scores(h, model, tokens)
    _, _, _, changed = tt.scores(h, model, other)
    # targets from the BOS on (target j is token j + 1; the target of position bos - 1 is the BOS itself)
    assert torch.equal(base[0, bos:], changed[0, bos:])
    inside = tokens.clone()
    inside[bos + 2] = (tokens[bos + 2] + 1 - 2) % (tt.VOCAB - 2) + 2
    _, _, _, moved = tt.scores(h, model, inside)
    assert not torch.allclose(base[0, bos + 2:bos + 3], moved[0, bos + 2:bos + 3])
