"""The n-gram tilt (TILT_ORDER): hints from the scored prefix only, equal to a plain left-to-right count; the tilt's
closed form equal to raising the hinted logit and renormalizing; TTT's score with it, and without it when the boost
is 0; the adapters still train on the untilted loss."""
import math

import pytest
import torch

import test_ttt as tt
import train_gpt
from train_gpt import ngram_hints


def reference_hints(tokens: torch.Tensor, order: int, threshold: float) -> list[int]:
    """One target at a time: the hint from the counts of the earlier targets with the same context, then the count
    of this one added (the top next token changes only when another's count exceeds it)."""
    t, n = tokens.tolist(), tokens.numel() - 1
    hints, total, pair, top = [-1] * n, {}, {}, {}
    for j in range(order - 2, n):
        ctx, nxt = tuple(t[j - order + 2:j + 1]), t[j + 1]
        if total.get(ctx, 0) and top[ctx][1] >= threshold * total[ctx]:
            hints[j] = top[ctx][0]
        total[ctx] = total.get(ctx, 0) + 1
        pair[ctx, nxt] = pair.get((ctx, nxt), 0) + 1
        if ctx not in top or pair[ctx, nxt] > top[ctx][1]:
            top[ctx] = (nxt, pair[ctx, nxt])
    return hints


@pytest.mark.parametrize("vocab", [3, 5, 40])
def test_hints_equal_a_left_to_right_count(vocab):
    g = torch.Generator().manual_seed(vocab)
    tokens = torch.randint(0, vocab, (2500,), generator=g)
    tokens[1000:1200] = tokens[200:400]  # a repeated passage: long contexts seen before
    seen = 0
    for order, threshold in ((2, 0.5), (3, 0.8), (5, 0.6), (16, 0.8)):  # 0.6: 15 of 25 is exactly the threshold
        want = reference_hints(tokens, order, threshold)
        assert ngram_hints(tokens, order, threshold).tolist() == want, (order, threshold)
        seen += sum(h >= 0 for h in want)
    assert seen > 100


def test_hints_depend_on_earlier_tokens_only():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (1500,), generator=g)
    before = ngram_hints(tokens, 4, 0.6)
    for t in (100, 700, 1400):
        changed = tokens.clone()
        changed[t + 1:] = torch.randint(0, 4, (len(tokens) - t - 1,), generator=g)
        after = ngram_hints(changed, 4, 0.6)
        assert torch.equal(before[:t], after[:t])  # target j's hint reads tokens up to j


def test_closed_form_is_the_renormalized_boost():
    h, model = tt.tiny(TILT_BOOST=1.7)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, tt.VOCAB, (2, 30), generator=g), torch.randint(0, tt.VOCAB, (2, 30), generator=g)
    hints = torch.randint(-1, tt.VOCAB, (2, 30), generator=g)
    hints[0, :5] = y[0, :5]  # some hints right
    with torch.no_grad():
        nll, tilt = model(x, y, reduction="none", hints=hints)
        logits = torch.nn.functional.linear(model.blocks[1](model.blocks[0](model.embed(x), model.cos[:30],
                                                                          model.sin[:30]), model.cos[:30],
                                                            model.sin[:30]), model.emb.weight)
        logits = logits.float() * (model.logit_scale * model.logit_init)
        boosted = logits + 1.7 * torch.nn.functional.one_hot(hints.clamp_min(0), tt.VOCAB) * (hints >= 0)[..., None]
        want = torch.nn.functional.cross_entropy(boosted.transpose(1, 2), y, reduction="none")
        plain = model(x, y, reduction="none")
    assert torch.allclose(nll, plain) and torch.allclose(nll + tilt, want, atol=1e-5)
    assert (tilt[hints < 0] == 0).all() and (tilt[0, :5] < 0).all()  # a right hint lowers the loss


def test_ttt_scores_with_the_tilt():
    """With TILT_ORDER the score is the tilted one where a hint fires (lower on a stream that repeats itself), equal to
    the untilted one where none does and everywhere with TILT_BOOST=0; the adapters train on the untilted loss, so
    the untilted part of the score is the same as without the tilt."""
    g = torch.Generator().manual_seed(2)
    doc = torch.cat([torch.tensor([tt.BOS]), torch.randint(2, tt.VOCAB, (60,), generator=g)])
    tokens = torch.cat([doc] * 6 + [doc[:1]])
    h0, model = tt.tiny()
    plain = tt.scores(h0, model, tokens)
    h, _ = tt.tiny(TILT_ORDER=3)
    tilted = tt.scores(h, model, tokens)
    hints = ngram_hints(tokens, 3, h.tilt_threshold)
    fired = hints >= 0
    assert fired.sum() > 100 and tilted[2]["hints"] == int(fired.sum())
    assert torch.allclose(tilted[3][0][~fired], plain[3][0][~fired], atol=1e-5)
    assert tilted[1] < plain[1] - 0.05
    off = tt.scores(*tt.tiny(TILT_ORDER=3, TILT_BOOST=0), tokens)  # the same weights (tiny's seed), boost 0
    assert torch.allclose(off[3][0], plain[3][0], atol=1e-5) and off[1] == pytest.approx(plain[1], rel=1e-6)


def test_bad_tilt_settings_are_rejected():
    for env, message in ((dict(TILT_ORDER=1), "TILT_ORDER=1"), (dict(TILT_THRESHOLD=0), "TILT_THRESHOLD"),
                         (dict(TILT_BOOST=-1), "TILT_BOOST")):
        with pytest.raises(ValueError, match=message):
            train_gpt.check_config(train_gpt.load_hparams({**tt.TINY, **{k: str(v) for k, v in env.items()}}), 1)
    assert math.isfinite(train_gpt.load_hparams({}).tilt_boost)
