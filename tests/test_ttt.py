"""Score-first test-time training: causality (a token's score depends on nothing after it), every target scored
exactly once with the plain evaluation's bytes, adapted matrices with unit rows, and the non-finite guard."""
import math

import pytest
import torch

import train_gpt
from train_gpt import GPT, adapted_norm2, documents, evaluate, evaluate_ttt, load_hparams

BOS, VOCAB = 1, 64
TINY = dict(VOCAB_SIZE=str(VOCAB), NUM_LAYERS="2", MODEL_DIM="32", NUM_HEADS="2", NUM_KV_HEADS="1",
            TRAIN_SEQ_LEN="48", EVAL_STRIDE="16", TTT_CHUNK="16", TTT_LR="0.05", TTT_RANK="2", TTT_BATCH_DOCS="3",
            TTT_TARGETS="q,k,v,o,up,down,head", TILT_ORDER="0")  # the TTT mechanics untilted; tests/test_tilt.py tilts


def tiny(**env):
    h = load_hparams({**TINY, **{k: str(v) for k, v in env.items()}})
    torch.manual_seed(0)
    model = GPT(h)
    with torch.no_grad():  # a trained-looking embedding: logits that depend on the input
        model.emb.weight.normal_(0, 0.5)
    return h, model


def stream(n=700, seed=0):
    """Random tokens with a BOS every 20 to 150 tokens (the first token too), so documents span 1 to 10 chunks and
    some are longer than the window."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (n,), generator=g)
    i = 0
    while i < n:
        tokens[i] = BOS
        i += int(torch.randint(20, 150, (), generator=g))
    return tokens


def luts():
    g = torch.Generator().manual_seed(3)
    return (torch.randint(0, 5, (VOCAB,), generator=g), torch.rand(VOCAB, generator=g) < 0.5,
            torch.rand(VOCAB, generator=g) < 0.2)


def scores(h, model, tokens, **kw):
    per_target = torch.zeros(2, tokens.numel() - 1, dtype=torch.float64)
    loss, bpb, info = evaluate_ttt(model, tokens, luts(), h, BOS, torch.autocast("cpu", enabled=False),
                                   per_target=per_target, **kw)
    return loss, bpb, info, per_target


def test_documents_cover_every_target_once():
    tokens = stream()
    starts, lengths = documents(tokens, BOS)
    covered = torch.zeros(tokens.numel() - 1, dtype=torch.long)
    for s, m in zip(starts, lengths):
        assert tokens[s] == BOS and m >= 1
        covered[s:s + m] += 1
    assert (covered == 1).all()
    no_bos_first = tokens.clone()
    no_bos_first[0] = 5
    assert documents(no_bos_first, BOS)[0][0] == 0
    assert documents(torch.tensor([3, 4, 5, 6]), BOS) == ([0], [3])  # no BOS at all: one document


def test_every_target_once_with_plain_bytes_and_adaptation_helps_repetition():
    h, model = tiny()
    tokens = stream()
    loss, bpb, info, per_target = scores(h, model, tokens)
    assert (per_target[1] == 1).all()
    assert info["tokens"] == tokens.numel() - 1 and info["nonfinite"] == []
    base, space, boundary = luts()
    x, y = tokens[:-1], tokens[1:]
    assert info["bytes"] == int((base[y] + (space[y] & ~boundary[x])).sum())
    assert loss == pytest.approx(per_target[0].mean().item(), rel=1e-9)
    assert bpb == pytest.approx(loss / math.log(2) * info["tokens"] / info["bytes"], rel=1e-9)
    # TTT_LR=0: nothing adapts, and the scores are the model's own within each document
    frozen, _ = tiny(TTT_LR=0)
    _, _, _, still = scores(frozen, model, tokens)
    starts, lengths = documents(tokens, BOS)
    s, m = starts[1], min(lengths[1], h.eval_seq_len)
    with torch.no_grad():
        own = model(tokens[None, s:s + m], tokens[None, s + 1:s + m + 1], reduction="none")[0].double()
    assert torch.allclose(still[0, s:s + m], own, atol=1e-5)
    # a document that repeats itself: adapting on its first half lowers the loss of its second half
    doc = torch.cat([torch.tensor([BOS]), torch.randint(2, VOCAB, (40,), generator=torch.Generator().manual_seed(9))])
    rep = torch.cat([doc, doc[1:], doc[1:], doc[1:2]])
    _, _, _, adapted = scores(h, model, rep)
    _, _, _, plain = scores(frozen, model, rep)
    assert adapted[0, 80:].mean() < plain[0, 80:].mean() - 0.05


@pytest.mark.parametrize("t", [37, 150, 301, 520])
def test_changing_tokens_after_t_leaves_scores_up_to_t(t):
    """Targets up to token t keep their scores when any tokens after t change (BOS positions included)."""
    h, model = tiny()
    tokens = stream()
    _, _, _, before = scores(h, model, tokens)
    changed = tokens.clone()
    changed[t + 1:] = stream(seed=7)[t + 1:]
    _, _, info, after = scores(h, model, changed)
    assert (after[1] == 1).all() and info["nonfinite"] == []
    # target index j is token j + 1: tokens up to t are targets 0..t-1
    assert torch.allclose(before[0, :t], after[0, :t], atol=1e-6, rtol=0)
    assert not torch.allclose(before[0, t:], after[0, t:])


def test_rank_split_sums_to_one_rank(monkeypatch):
    h, model = tiny()
    tokens = stream()
    loss, _, info, _ = scores(h, model, tokens)
    total, bad = torch.zeros(3, dtype=torch.float64), []
    for rank in range(3):
        reduced = []
        monkeypatch.setattr(train_gpt, "dist", type("D", (), dict(
            is_initialized=staticmethod(lambda: True), get_rank=staticmethod(lambda: rank),
            get_world_size=staticmethod(lambda: 3), all_reduce=staticmethod(reduced.append),
            all_gather_object=staticmethod(lambda out, obj: out.__setitem__(slice(None), [obj] * 3)))))
        evaluate_ttt(model, tokens, luts(), h, BOS, torch.autocast("cpu", enabled=False))
        total += reduced[0]
    assert total[1].item() == info["tokens"] and total[2].item() == info["bytes"]
    assert (total[0] / total[1]).item() == pytest.approx(loss, rel=1e-6)


def test_adapted_rows_stay_unit_and_norms_are_exact():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(24, 16, generator=g), dim=-1)
    a, b = torch.randn(3, 4, 16, generator=g), torch.randn(3, 24, 4, generator=g)
    want = (w + b @ a).square().sum(-1)
    assert torch.allclose(adapted_norm2(w, a, b), want, rtol=1e-5)
    h, model = tiny()
    block, x = model.blocks[0], torch.randn(3, 5, 32, generator=g)
    for name in ("q", "o"):
        p = getattr(block, name)
        rows = p.size(0)
        lora = {name: (torch.randn(3, 2, p.size(1), generator=g), torch.randn(3, rows, 2, generator=g))}
        a, b = lora[name]
        eff = torch.nn.functional.normalize(p + b @ a, dim=-1)  # (3, rows, d): unit rows of each sequence's matrix
        inp = x if name == "q" else torch.randn(3, 5, rows, generator=g)
        want = inp @ eff.transpose(1, 2) if name == "q" else inp @ eff
        assert torch.allclose(block.mm(inp, name, lora), want, atol=1e-5)


def test_nonfinite_document_is_scored_without_adaptation_and_named():
    """An adapter step that overflows drops that document's adaptation; its chunks are scored by the base model."""
    h, model = tiny(TTT_LR=1e30)
    tokens = stream()
    loss, _, info, per_target = scores(h, model, tokens)
    assert math.isfinite(loss) and (per_target[1] == 1).all()
    assert info["nonfinite"], "an lr of 1e30 should overflow some document's adapters"
    frozen, _ = tiny(TTT_LR=0)
    _, _, _, plain = scores(frozen, model, tokens)
    starts, lengths = documents(tokens, BOS)
    for d in info["nonfinite"]:  # its first chunk precedes any step, its last one follows the drop
        s, m, c = starts[d], lengths[d], h.ttt_chunk
        last = s + (m - 1) // c * c
        assert m > c and torch.allclose(per_target[0, s:s + c], plain[0, s:s + c], atol=1e-6)
        assert torch.allclose(per_target[0, last:s + m], plain[0, last:s + m], atol=1e-6)


def test_bad_settings_are_rejected():
    assert load_hparams({**TINY, "TTT_CHUNK": "100"}).ttt_chunk == 48  # at most EVAL_SEQ_LEN
    for env, message in ((dict(TTT_CHUNK=0), "TTT_CHUNK"),
                         (dict(TTT_TARGETS="q,x"), "TTT_TARGETS"), (dict(TTT_RANK=0), "TTT_RANK"),
                         (dict(TTT=2), "TTT=2")):
        with pytest.raises(ValueError, match=message):
            train_gpt.check_config(load_hparams({**TINY, **{k: str(v) for k, v in env.items()}}), 1)


def test_ttt_tool_rescores_an_artifact(cpu_runs, tmp_path):
    """tools/ttt.py on a real tiny run: the plain score is the run's own, TTT_LR=0 changes the TTT score, bad files
    fail with one line, an existing --json is not overwritten."""
    import json
    import re
    import subprocess
    import sys

    from _logs import REPO
    run = cpu_runs[-1]
    tool = [sys.executable, str(REPO / "tools" / "ttt.py"), "--log", str(run["log"])]
    out = subprocess.run(tool + ["--artifact", str(run["ptz"]), "--json", str(tmp_path / "a.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "a.json").read_text())
    body = run["log"].read_text()
    plain = float(re.findall(r"(?m)^final_roundtrip_plain val_loss:\S+ val_bpb:(\S+) ", body)[-1])
    ttt = float(re.findall(r"(?m)^final_ttt_roundtrip_exact val_loss:\S+ val_bpb:(\S+)$", body)[-1])
    assert result["plain_bpb"] == pytest.approx(plain, abs=6e-5)  # the same weights and windows (4 decimals logged)
    assert result["sliding_bpb"] is None and result["unadapted_docs"] == []
    assert result["ttt_bpb"] == pytest.approx(ttt, abs=1e-5) and result["nonfinite_docs"] == []
    assert re.search(r"(?m)^ttt   val_bpb:\d+\.\d{4} time:\S+s gain_bpb:[+-]\d+\.\d{4} vs:plain docs:\d+ tokens:\d+ "
                     r"nonfinite_docs:0 unadapted_docs:0$", out.stdout)
    frozen = subprocess.run(tool + ["--artifact", str(run["ptz"]), "--env", "TTT_LR=0", "--json",
                                    str(tmp_path / "b.json")], capture_output=True, text=True, timeout=300)
    assert frozen.returncode == 0 and json.loads((tmp_path / "b.json").read_text())["ttt_bpb"] != result["ttt_bpb"]
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(b"junk")
    failed = subprocess.run(tool + ["--artifact", str(bad)], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "truncated or corrupt" in failed.stderr
    again = subprocess.run(tool + ["--artifact", str(run["ptz"]), "--json", str(tmp_path / "a.json")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not overwriting" in again.stderr


def test_accepts_a_compiled_forward():
    """The run passes torch.compile's module, which has no truth value (bool() raises): it must be used as given."""
    class Compiled:  # stands in for torch._dynamo's OptimizedModule, without minutes of CPU compilation
        def __init__(self, model):
            self.model, self.calls = model, 0

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return self.model(*args, **kwargs)

        def __bool__(self):
            raise TypeError("GPT does not support len()")

    h, model = tiny()
    tokens = stream()
    fwd = Compiled(model)
    loss = evaluate_ttt(model, tokens, luts(), h, BOS, torch.autocast("cpu", enabled=False), fwd)[0]
    assert fwd.calls > 0 and loss == pytest.approx(scores(h, model, tokens)[0], rel=1e-9)


def test_a_later_bos_changes_no_earlier_score():
    """Found in review: a document's last window was aligned to its length, which the next BOS decides. Moving that
    BOS later (60 -> 64) must leave every score of the targets before it unchanged."""
    h, model = tiny()
    base = torch.randint(2, VOCAB, (120,), generator=torch.Generator().manual_seed(0))
    base[0] = BOS
    a, b = base.clone(), base.clone()
    a[60], b[64] = BOS, BOS
    _, _, _, pa = scores(h, model, a)
    _, _, _, pb = scores(h, model, b)
    assert torch.allclose(pa[0, :59], pb[0, :59], atol=1e-6, rtol=0)


def test_fallback_keeps_scores_before_the_first_nonfinite_one(monkeypatch):
    """A non-finite score at position j of a chunk re-scores only from j on: earlier targets keep their scores."""
    h, model = tiny()
    tokens = stream()
    _, _, _, before = scores(h, model, tokens)
    starts, lengths = documents(tokens, BOS)
    d = max(range(len(lengths)), key=lambda i: lengths[i])
    s, c = starts[d], h.ttt_chunk
    poison = s + 2 * c + 5  # a token in the document's third chunk
    real = GPT.forward

    def forward(self, idx, targets, reduction="mean", lora=None):
        out = real(self, idx, targets, reduction, lora)
        if lora is None:
            return out
        adapted = sum(b.flatten(1).abs().sum(1) for _, b in lora.values()) > 0  # rows with non-zero adapters only
        return torch.where(adapted[:, None] & (idx == tokens[poison]), float("nan"), out)
    monkeypatch.setattr(GPT, "forward", forward)
    model2 = copy_of(model)
    _, _, info, after = scores(h, model2, tokens)
    assert d in info["nonfinite"] and (after[1] == 1).all() and after[0].isfinite().all()
    first = next(j for j in range(s + c, s + 3 * c) if tokens[j] == tokens[poison])  # first poisoned input in doc d
    assert torch.allclose(after[0, s:first], before[0, s:first], atol=1e-6, rtol=0)


def copy_of(model):
    import copy
    return copy.deepcopy(model)


def test_adapted_projections_keep_the_matmul_dtype():
    """Under bf16 autocast the residual stream is fp32: q, k, v with adapters must still come out in bf16, as
    FlashAttention takes one dtype (found in review)."""
    h, model = tiny()
    block, g = model.blocks[0], torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 32, generator=g)
    lora = {n: (torch.randn(2, 2, 32, generator=g), torch.randn(2, getattr(block, n).size(0), 2,
                                                                             generator=g)) for n in ("k", "o")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.mm(x, "k", lora).dtype == block.mm(x, "q", lora).dtype == torch.bfloat16
        assert block.mm(x.bfloat16(), "o", lora).dtype == torch.bfloat16


def test_deadline_scores_the_rest_unadapted_within_budget_plus_one_segment(monkeypatch):
    """A budget too small to adapt the split (but enough to score it forward only): from the first segment whose
    adaptation would not leave time to score the rest forward only, documents are scored forward only. On a clock that
    advances by each step's work at given rates (a fake one: timing on a loaded CPU proves nothing; the rates are what
    the warm-up measures), the pass ends within the budget plus one adapted segment; every target is still scored
    exactly once with the plain bytes; the unadapted documents score as with TTT_LR=0."""
    h, model = tiny(TTT_BATCH_DOCS=2)
    tokens = stream(n=1500)
    _, _, full, _ = scores(h, model, tokens)
    assert full["unadapted"] == [] and full["deadline_at"] is None and full["forward_tokens"] == 0
    starts, lengths = documents(tokens, BOS)
    rows = train_gpt.forward_rows(starts, lengths, h.ttt_chunk, h.eval_seq_len)
    rates = train_gpt.Rates(adapted=1000.0, forward=5000.0, forward_ratio=train_gpt.row_tokens(rows) / sum(lengths))
    now, real_batch, real_forward = [0.0], train_gpt.ttt_batch, train_gpt.score_forward

    def timed_batch(fwd, tokens, starts, lengths, *args, **kwargs):
        now[0] += sum(lengths) / rates.adapted
        return real_batch(fwd, tokens, starts, lengths, *args, **kwargs)

    def timed_forward(fwd, tokens, rows, *args, **kwargs):
        now[0] += train_gpt.row_tokens(rows) / rates.forward
        return real_forward(fwd, tokens, rows, *args, **kwargs)
    monkeypatch.setattr(train_gpt, "ttt_batch", timed_batch)
    monkeypatch.setattr(train_gpt, "score_forward", timed_forward)
    budget = train_gpt.row_tokens(rows) / rates.forward + 0.3 * sum(lengths) / rates.adapted
    loss, bpb, info, per_target = scores(h, model, tokens, deadline=budget, rates=rates, clock=lambda: now[0])
    print(f"budget {budget:.3f} fake s, ended at {now[0]:.3f}; {len(info['unadapted'])} of {info['docs']} unadapted; "
          f"longest segment {info['longest_segment_s']:.3f} s")
    assert now[0] <= budget + info["longest_segment_s"]
    assert 0 < len(info["unadapted"]) < info["docs"] and info["deadline_at"] is not None
    assert info["forward_tokens"] > 0
    assert (per_target[1] == 1).all() and info["bytes"] == full["bytes"] and info["tokens"] == full["tokens"]
    frozen = scores(load_hparams({**TINY, "TTT_LR": "0", "TTT_BATCH_DOCS": "2"}), model, tokens)[3]
    for d in info["unadapted"]:
        s, n = starts[d], lengths[d]
        assert torch.allclose(per_target[0, s:s + n], frozen[0, s:s + n], atol=1e-5)
    # a deadline already passed: nothing adapts, and every score is the TTT_LR=0 one
    now[0] = 0.0
    info, per_target = scores(h, model, tokens, deadline=-1.0, rates=rates, clock=lambda: now[0])[2:]
    assert sorted(info["unadapted"]) == list(range(info["docs"])) and info["window_tokens"] == 0
    assert torch.allclose(per_target[0], frozen[0], atol=1e-5) and (per_target[1] == 1).all()


def test_forward_rows_read_each_target_once_with_its_chunk_windows_context():
    """forward_rows: every target in exactly one row, with the context its TTT chunk window gives it (the window
    starts at the BOS within the first EVAL_SEQ_LEN // TTT_CHUNK chunks, at the chunk's end - EVAL_SEQ_LEN beyond), in
    one row per document within those chunks."""
    for chunk, seq_len in ((16, 48), (16, 40), (48, 48)):
        lengths = [1, 5, 16, 17, 40, 47, 48, 49, 100, 161]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        rows = train_gpt.forward_rows(starts, lengths, chunk, seq_len)
        seen = {}
        for first, width, scored_from in rows:
            for p in range(first + scored_from, first + width):
                assert p not in seen
                seen[p] = first
        for s, n in zip(starts, lengths):
            for j in range(n):
                c = j // chunk
                assert seen[s + j] == s + max(0, (c + 1) * chunk - seq_len), (chunk, seq_len, n, j)
        head = seq_len // chunk
        assert len(rows) == len(lengths) + sum(max(0, -(-n // chunk) - head) for n in lengths)


def test_forward_batches_never_make_a_shape_that_compiles_anew():
    for rows in ([(0, 1, 0)], [(0, 8, 0)] * 8, [(0, 5, 0), (9, 3, 0)] * 20):
        for batch in train_gpt.forward_batches(rows, 64):
            width = max(2, batch[0][1])
            assert len(batch) >= 2 and len(batch) != width and len(batch) * width <= max(64, 3 * width)
            assert all(w <= width for _, w, _ in batch)
    assert sum(len([r for r in b if r[1]]) for b in train_gpt.forward_batches([(0, 5, 0), (9, 3, 0)] * 20, 64)) == 40


@pytest.mark.parametrize("t", [150, 420])
def test_phased_adaptation_keeps_causality(t):
    """With phases (SGD on the base weights between groups of documents in stream order), targets up to token t
    keep their scores when any tokens after t change, and the phases do change later scores."""
    h, model = tiny(TTT_PHASES=2, TTT_PHASE_DOCS=3, TTT_PHASE_LR=0.05)
    h0, _ = tiny()
    tokens = stream()
    _, _, info, before = scores(h, model, tokens)
    assert info["phase_steps"] == 2
    without = scores(h0, model, tokens)[3]
    assert not torch.allclose(before[0], without[0])
    changed = tokens.clone()
    changed[t + 1:] = stream(seed=7)[t + 1:]
    _, _, info, after = scores(h, model, changed)
    assert (after[1] == 1).all() and info["nonfinite"] == []
    assert torch.allclose(before[0, :t], after[0, :t], atol=1e-6, rtol=0)


def test_no_base_update_uses_a_document_before_it_is_scored(monkeypatch):
    """Every document a phase step trains on has all its targets scored already; the base weights are back as they
    were after the pass."""
    h, model = tiny(TTT_PHASES=3, TTT_PHASE_DOCS=4, TTT_PHASE_LR=0.05)
    tokens = stream(n=1500)
    per_target = torch.zeros(2, tokens.numel() - 1, dtype=torch.float64)
    real, calls = train_gpt.adapt_base, []

    def checked(model, fwd, tokens, starts, lengths, h, autocast):
        for s, n in zip(starts, lengths):
            assert (per_target[1, s:s + n] == 1).all(), f"document at {s} used before all its targets were scored"
        calls.append(len(starts))
        return real(model, fwd, tokens, starts, lengths, h, autocast)
    monkeypatch.setattr(train_gpt, "adapt_base", checked)
    weights = [p.detach().clone() for p in model.parameters()]
    info = evaluate_ttt(model, tokens, luts(), h, BOS, torch.autocast("cpu", enabled=False), per_target=per_target)[2]
    assert len(calls) == 3 and all(c > 0 for c in calls) and info["phase_steps"] == 3
    assert (per_target[1] == 1).all()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), weights))


@pytest.mark.parametrize("mean,batch_docs,window,width", [(1276, 32, 2048, 32), (2796, 8, 64, 1), (2114, 32, 128, 4),
                                                          (200, 8, 64, 5), (40, 8, 64, 8)])
def test_batch_width_is_the_width_the_pass_makes(mean, batch_docs, window, width):
    """batch_width from document lengths (the default shape on FineWeb-like lengths, the tiny runs', P1's, ...) is the
    mean width of the batches the pass makes from segments of such documents, to 35%."""
    h = load_hparams({**TINY, "TTT_BATCH_DOCS": str(batch_docs), "EVAL_SEQ_LEN": str(window), "TTT_CHUNK": "16"})
    g = torch.Generator().manual_seed(0)
    lengths = (torch.empty(4000).exponential_(1 / mean, generator=g).long() + 2).tolist()
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    assert train_gpt.batch_width(h, lengths) == width
    made = [len(b) for seg in train_gpt.ttt_segments(starts, lengths, h, 1)
            for b in train_gpt.rank_batches(seg.docs, lengths, h, 0, 1)]
    assert abs(sum(made) / len(made) - width) <= 0.35 * width


def test_the_warm_up_stops_timing_at_the_first_chunk_too_slow_for_the_plan():
    """too_slow(rates) True after a chunk: no finer chunk is timed (the plan could not take one, each being slower);
    never True: every candidate is."""
    h, model = tiny(TTT_BATCH_DOCS=4, EVAL_SEQ_LEN=48, TTT_CHUNK=32, TTT_PLAN=0.8, EVAL_BUDGET_SECONDS=10)
    warm = train_gpt.warm_up_documents(h, 1, VOCAB, BOS, torch.Generator().manual_seed(0), [60] * 20)
    seen = []

    def warm_up(verdicts):
        seen.clear()
        return train_gpt.ttt_warm_up(model, model, warm, luts(), h, BOS, torch.autocast("cpu", enabled=False),
                                     lambda: None, lambda r: seen.append(r) or verdicts[len(seen) - 1])
    assert train_gpt.plan_chunks(h) == [32, 16, 8, 4]
    assert list(warm_up([False, True, True, True])) == [32, 16] and len(seen) == 2
    assert list(warm_up([True] * 4)) == [32]
    assert list(warm_up([False] * 4)) == [32, 16, 8, 4] and all(min(r) > 0 for r in seen)


def test_the_warm_up_times_batches_as_wide_as_the_pass_makes_them(monkeypatch):
    """The warm-up's documents have the lengths drawn (no random BOS cuts them: at vocab 1,024 one did every ~1,024
    tokens), and it times batches of batch_width documents (its first batch, the compile, is TTT_BATCH_DOCS wide).
    Timed at full width, the tiny runs' rates were 2x too fast: their 1,024-token segments hold about one
    2,800-token document each."""
    h, model = tiny(TTT_BATCH_DOCS=4, EVAL_SEQ_LEN=48, TTT_CHUNK=16, TTT_PLAN=0)
    widths, batch = [], train_gpt.ttt_batch
    monkeypatch.setattr(train_gpt, "ttt_batch", lambda fwd, tokens, s, n, *a, **k: widths.append(len(n)) or
                        batch(fwd, tokens, s, n, *a, **k))
    for doc_lengths, want in (([30] * 40, 4), ([400] * 40, 1)):  # 2 x 4 x 48 / 30 = 12.8 -> 4; / ~370 -> 1
        widths.clear()
        warm = train_gpt.warm_up_documents(h, 1, VOCAB, BOS, torch.Generator().manual_seed(0), doc_lengths)
        assert documents(warm, BOS)[1] == doc_lengths[:9] + [48 + 16]  # 2 x 4 + 1 drawn, then the long one
        train_gpt.ttt_warm_up(model, model, warm, luts(), h, BOS, torch.autocast("cpu", enabled=False), lambda: None)
        assert widths[0] == 4 and set(widths[1:]) == {want}, widths
