"""Sliding-window evaluation (every target once, longest context, independent of batching and ranks) and the
byte counts behind val_bpb."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train_gpt
from train_gpt import byte_luts, evaluate

N, SEQ_LEN = 1003, 100  # N - 1 = 1002 targets: not a multiple of 7, 64 or 100


def random_luts(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 5, (vocab,), generator=g), torch.rand(vocab, generator=g) < 0.5,
            torch.rand(vocab, generator=g) < 0.2)


def context_nll(x, y):
    """A deterministic float64 'loss' that depends on the whole window before each target."""
    return (x.double().cumsum(1) * 0.37 + y) % 11 / 7


def longest_context(n_targets, seq_len, stride):
    """For each target index j (1..n_targets), the most tokens before it that any window holds: windows of seq_len
    start at 0, stride, 2 stride, ... while they fit, plus one window ending at the last target."""
    starts = [s for s in range(0, n_targets, stride) if s + seq_len <= n_targets] + [n_targets - seq_len]
    best = torch.zeros(n_targets + 1, dtype=torch.long)
    for s in starts:
        best[s + 1:s + seq_len + 1] = torch.maximum(best[s + 1:s + seq_len + 1], torch.arange(1, seq_len + 1))
    return best


def simulated_rank_sums(monkeypatch, world, *args):
    """evaluate() as each rank of `world` would run it; returns the summed (nll, scored targets, bytes) that its
    all_reduce would produce."""
    total = torch.zeros(3, dtype=torch.float64)
    for rank in range(world):
        reduced = []
        monkeypatch.setattr(train_gpt, "dist", SimpleNamespace(
            is_initialized=lambda: True, get_rank=lambda: rank, get_world_size=lambda: world,
            all_reduce=reduced.append))
        evaluate(*args)
        total += reduced[0]
    return total


@pytest.mark.parametrize("stride", [1, 7, 64, SEQ_LEN])
def test_every_target_once_with_longest_context(stride, monkeypatch):
    tokens = torch.arange(N)  # token j is j: a window's first input is its start, a target's id is its index
    base, space, boundary = luts = random_luts(N)
    weight = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    best = longest_context(N - 1, SEQ_LEN, stride)

    def nll_fn(x, y):  # weight[y], plus a penalty >= 1 whenever a target is scored with less than its longest context
        return weight[y] + (y - x[:, :1] - best[y]).double().square()

    j = torch.arange(1, N)
    want_bytes = (base[j] + (space[j] & ~boundary[j - 1])).sum().item()
    for world in (2, 3):
        nll, count, nbytes = simulated_rank_sums(monkeypatch, world, nll_fn, tokens, luts, SEQ_LEN, stride, 5).tolist()
        assert count == N - 1 and nbytes == want_bytes
        # random weights: sum(multiplicity * weight) matches only if every target's multiplicity is 1
        assert nll == pytest.approx(weight[1:].sum().item(), rel=1e-12)
    monkeypatch.undo()
    loss, bpb = evaluate(nll_fn, tokens, luts, SEQ_LEN, stride, 32)
    assert loss == pytest.approx(weight[1:].mean().item(), rel=1e-12)
    assert bpb == pytest.approx(weight[1:].sum().item() / math.log(2) / want_bytes, rel=1e-12)


def test_stride_equal_to_seq_len_is_plain_evaluation():
    seq_len, vocab = 64, 512
    tokens = torch.randint(0, vocab, (5 * seq_len + 1,), generator=torch.Generator().manual_seed(0))
    base, space, boundary = luts = random_luts(vocab)
    x, y = tokens[:-1].view(-1, seq_len), tokens[1:].view(-1, seq_len)
    nll = context_nll(x, y)
    nbytes = (base[y] + (space[y] & ~boundary[x])).sum().item()
    loss, bpb = evaluate(context_nll, tokens, luts, seq_len, seq_len, 2)
    assert loss == pytest.approx(nll.mean().item(), rel=1e-12)
    assert bpb == pytest.approx(nll.sum().item() / math.log(2) / nbytes, rel=1e-12)


def gloo_case():
    tokens = torch.randint(0, 512, (N,), generator=torch.Generator().manual_seed(2))
    return (context_nll, tokens, random_luts(512), SEQ_LEN, 7)


def _gloo_rank(rank, init_method, out, batch_seqs):
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    result = evaluate(*gloo_case(), batch_seqs)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_independent_of_batch_size_and_ranks(tmp_path):
    results = {b: evaluate(*gloo_case(), b) for b in (1, 3, 32)}
    out = tmp_path / "ranks2.pt"
    mp.spawn(_gloo_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(out), 3), nprocs=2)
    results["2 ranks, batch 3"] = torch.load(out)
    print("(val_loss, val_bpb) by batch size / ranks:", results)
    for loss, bpb in results.values():
        assert loss == pytest.approx(results[1][0], rel=1e-12) and bpb == pytest.approx(results[1][1], rel=1e-12)


# ------------------------------------------------------------------ bytes per token

SPECIAL = ["Café naïve — 東京 😀🚀 Ünïcödé ½ ∑ 𝔘 façade ångström", "€100 ≥ £90; ¿qué? ça va! Ελληνικά Кириллица",
           "tabs\tand  double  spaces\n\nand new lines", "日本語のテキスト", "emoji only: 🦜🦜🦜 🧪"]


def bytes_counted_and_decoded(sp, docs):
    """(bytes evaluate() would count over the concatenated [BOS] + ids of each doc, UTF-8 bytes of the decoded docs,
    number of byte-fallback tokens, number of docs used): docs holding an unknown token are left out."""
    encoded = [ids for ids in sp.encode(docs) if sp.unk_id() not in ids]
    tokens = torch.tensor([t for ids in encoded for t in [sp.bos_id(), *ids]])
    base, space, boundary = byte_luts(sp, sp.vocab_size(), "cpu")
    x, y = tokens[:-1], tokens[1:]
    counted = (base[y] + (space[y] & ~boundary[x])).sum().item()
    decoded = sum(len(sp.decode(ids).encode("utf-8")) for ids in encoded)
    return counted, decoded, sum(map(sp.is_byte, tokens.tolist())), len(encoded)


def paragraphs(docs):
    return [p for doc in docs for p in doc.split("\n\n")]


def check_bytes(model_path, docs):
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    for name, texts in (("stdlib docs", docs), ("stdlib paragraphs", paragraphs(docs)), ("non-ASCII", SPECIAL)):
        counted, decoded, byte_tokens, used = bytes_counted_and_decoded(sp, texts)
        print(f"{Path(model_path).name} {name}: {used}/{len(texts)} texts without <unk>, {counted} bytes counted, "
              f"{decoded} decoded, {byte_tokens} byte-fallback tokens")
        assert counted == decoded
    return sp


def test_bytes_match_decoded_text_session_tokenizer(tokenizer_path, stdlib_docs):
    sp = check_bytes(tokenizer_path, stdlib_docs)
    assert bytes_counted_and_decoded(sp, SPECIAL)[2] > 0  # the special texts do go through byte fallback
    assert bytes_counted_and_decoded(sp, stdlib_docs)[3] == len(stdlib_docs)  # and nothing is unknown


def test_bytes_match_decoded_text_official_tokenizers(official_tokenizer, stdlib_docs):
    for path in (official_tokenizer, official_tokenizer.parent / "fineweb_8192_bpe.model"):
        if path.exists():
            check_bytes(path, stdlib_docs)


def test_unknown_tokens_count_no_bytes_and_hide_the_next_space(official_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(official_tokenizer))
    ids = sp.encode("a { b")
    if sp.unk_id() not in ids:
        pytest.skip("this tokenizer knows '{'")
    base, space, boundary = byte_luts(sp, sp.vocab_size(), "cpu")
    tokens = torch.tensor([sp.bos_id(), *ids])
    per_token = base[tokens[1:]] + (space[tokens[1:]] & ~boundary[tokens[:-1]])
    pieces = [sp.id_to_piece(i) for i in ids]
    print(list(zip(pieces, per_token.tolist())))
    assert per_token[ids.index(sp.unk_id())] == 0
    unk, space = sp.unk_id(), "\u2581"
    want = [0 if i == unk else len(p.removeprefix(space).encode()) + (p[0] == space and prev != unk)
            for prev, i, p in zip([sp.bos_id(), *ids], ids, pieces)]
    assert per_token.tolist() == want
