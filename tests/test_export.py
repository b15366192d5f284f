"""The export: unit rows stored as integers only, the embedding within half a step, GPTQ against round-to-nearest on a
known Hessian, the calibration hooks, the budget search landing in its window, and a container that
reloads bit-identically or fails with one message."""
import contextlib
import copy
import math
import re
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm
import torch

import train_gpt
from conftest import train_tiny
from train_gpt import (GPT, MATRIX_KINDS, SIZE_LIMIT, TokenStream, byte_luts, collect_hessians, dequantize, evaluate,
                       finest_step, gptq, hessian_name,
                       load_artifact, load_hparams, load_tokens, pack_artifact, quantized_tensors,
                       shard_files, unpack_artifact, write_artifact)

TINY = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64"}


def sin_angle(a, b):
    """Row-wise sine of the angle between a and b, in float64 (stable for tiny angles, unlike acos)."""
    a, b = a.double() / a.double().norm(dim=-1, keepdim=True), b.double() / b.double().norm(dim=-1, keepdim=True)
    return (b - (a * b).sum(-1, keepdim=True) * a).norm(dim=-1)


def tiny_model(seed=0, **env):
    h = load_hparams({**TINY, "VOCAB_SIZE": "512", **env})
    torch.manual_seed(seed)
    return h, GPT(h)


@pytest.mark.parametrize("lam", [0.1, 0.3, 1.0])
def test_unit_rows_are_integers_only_and_their_angle_is_bounded(lam):
    h, model = tiny_model()
    tensors = quantized_tensors(model, h, lam, None)
    roles = {name: role for name, role, _ in tensors}
    params = dict(model.named_parameters())
    block = {n for n, p in params.items() if any(p is m for m in model.matrices())}
    assert {n for n, r in roles.items() if r == "unit"} == block
    steps = [name for name, role, _ in tensors if role == "step"]
    assert steps == ["emb.weight"]  # the only scale in the file: unit rows carry none
    state = dequantize(tensors)
    ints = {name: a for name, role, a in tensors if role == "unit"}
    for name in block:
        w, r = params[name].detach(), state[name]
        assert ints[name].dtype == np.int8
        assert ((r.double().norm(dim=-1) - 1).abs() < 1e-6).all()
        # every element within half a step (lam x RMS = lam |w| / sqrt(d)) and nothing clipped at these lams, so the
        # error e has |e| <= lam |w| / 2 and sin(angle(w, w + e)) <= lam / 2; renormalizing keeps the angle
        assert (sin_angle(w, r) <= lam / 2 * (1 + 1e-3)).all(), name
        # scale-free: doubling a row's integers loads the same row
        doubled = [(n, role, a.astype(np.int16) * 2 if n == name else a) for n, role, a in tensors]
        assert torch.allclose(dequantize(doubled)[name], r, atol=1e-7)


def test_embedding_is_within_half_a_step_and_keeps_its_norms():
    h, model = tiny_model()
    lam = 0.4
    tensors = quantized_tensors(model, h, lam, None)
    arrays = {(name, role): a for name, role, a in tensors}
    q, step = arrays[("emb.weight", "rows")], arrays[("emb.weight", "step")]
    w = model.emb.weight.detach()
    rms = w.square().mean(-1, keepdim=True).sqrt()
    assert step.dtype == np.float16 and torch.equal(torch.from_numpy(step).float(), (lam * h.embed_step_ratio * rms).half().float())
    deq = dequantize(tensors)["emb.weight"]
    assert torch.equal(deq, torch.from_numpy(q).float() * torch.from_numpy(step).float())
    assert ((w - deq).abs() <= torch.from_numpy(step).float() / 2 * (1 + 1e-3)).all()


def test_finest_step_clips_nothing_and_a_finer_one_clips():
    h, model = tiny_model()
    with torch.no_grad():
        model.blocks[0].up[3, 5] = 3.0  # an outlier, then back onto the sphere
        model.renorm_()
    lam = finest_step(model, h)

    def steps_to_largest(lam):  # the most steps any weight is from zero: int8 holds 127
        worst = 0.0
        for name, p in model.named_parameters():
            if p.ndim == 2:
                w = p.detach().float()
                step = lam * (h.embed_step_ratio if name == "emb.weight" else 1) * w.square().mean(-1, keepdim=True).sqrt()
                worst = max(worst, (w.abs() / step).max().item())
        return worst

    assert steps_to_largest(lam) == pytest.approx(127, rel=1e-5) and steps_to_largest(0.99 * lam) > 127.5
    params = dict(model.named_parameters())
    for name, role, q in quantized_tensors(model, h, lam, None):
        if role == "unit":  # every weight within half a step of its integer: nothing clipped
            w = params[name].detach()
            step = (lam * w.square().mean(-1, keepdim=True).sqrt()).half().float()
            assert ((w / step - torch.from_numpy(q).float()).abs() <= 0.5 + 1e-3).all(), name


def test_gptq_beats_round_to_nearest_on_a_known_hessian():
    """Correlated inputs X (n, 128), H = X^T X: the output error |(W - Q step) X^T|^2 of GPTQ is well below
    round-to-nearest at the same step; with a diagonal Hessian nothing propagates and GPTQ is round-to-nearest."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=g)
    # inputs near a 16-dimensional subspace, as activations are: the rounding errors can cancel along it
    x = torch.randn(4096, 16, generator=g) @ torch.randn(16, 128, generator=g) + 0.3 * torch.randn(4096, 128, generator=g)
    hessian = x.T @ x
    for step in (0.25 * torch.ones(96, 1), 0.25 * torch.rand(1, 128, generator=g) + 0.1):  # per row, per column
        rtn = (w / step).round().clamp(-127, 127)
        q = gptq(w, step, hessian, damp=0.01)[0].float()

        def err(q):
            return ((w - q * step) @ x.T).square().sum().item()

        print(f"step {tuple(step.shape)}: output error GPTQ / round-to-nearest = {err(q) / err(rtn):.3f}")
        assert err(q) < 0.2 * err(rtn)
        assert torch.equal(gptq(w, step, torch.diag(hessian.diagonal()), damp=0.01)[0].float(), rtn)


def test_calibration_hooks_collect_each_matrix_input_gram():
    h, model = tiny_model()
    x = torch.randint(0, 512, (3, 16))
    seen = {}
    model.calibrating(seen)
    with torch.no_grad():
        model(x, x)
    model.calibrating(None)
    assert model.hessians is None and all(b.hessians is None for b in model.blocks)
    names = {hessian_name(f"blocks.{i}.{k}") for i in range(2) for k in MATRIX_KINDS} | {"emb.weight"}
    assert set(seen) == names and "blocks.0.qkv" in names and len(names) == 2 * 4 + 1  # q, k, v share one input
    inp = train_gpt.unit(model.emb(x)).reshape(-1, 64)  # block 0's attention input
    assert torch.allclose(seen["blocks.0.qkv"], inp.T @ inp, atol=1e-5)
    hidden = int(h.mlp_mult * h.model_dim)
    assert seen["blocks.1.down"].shape == (hidden, hidden) and seen["emb.weight"].shape == (64, 64)
    # the hooks cost the compiled training graph nothing: no graph break while not calibrating
    explained = torch._dynamo.explain(model)(x, x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def stand_in(layers=4, dim=256):
    """A 2.6M-parameter model with the trained weights' heavy tails: unit rows of Student-t(5) draws."""
    h = load_hparams({"NUM_LAYERS": str(layers), "MODEL_DIM": str(dim), "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
                      "VOCAB_SIZE": "1024"})
    torch.manual_seed(1)
    model = GPT(h)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.distributions.StudentT(5.0).sample(p.shape) * 0.05)
        model.renorm_()
    return h, model


def test_budget_search_lands_in_its_window(tmp_path):
    h, model = stand_in()
    n = sum(p.numel() for p in model.parameters())
    path = str(tmp_path / "final_model.ptz")
    hessians = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            d = p.size(0) if name.rsplit(".", 1)[-1] in ("o", "down") else p.size(1)
            x = torch.randn(512, d)
            hessians[hessian_name(name)] = x.T @ x
    for method, model_bytes in (("rtn", int(0.45 * n)), ("gptq", int(0.40 * n))):
        h.quant_method = method
        lo = int(model_bytes * 0.995)  # as narrow as main()'s window at 16 MB
        lines = []
        size = write_artifact(model, path, h, lo, model_bytes, hessians if method == "gptq" else None, lines.append)
        print(lines[0])
        assert lo <= size <= model_bytes and (tmp_path / "final_model.ptz").stat().st_size == size
        m = re.match(rf"export method:{method} step:(\S+)xRMS embed_step:(\S+)xRMS rtn_tries:(\d+)", lines[0])
        assert m and float(m.group(2)) == pytest.approx(float(m.group(1)) * h.embed_step_ratio, rel=1e-3)
        assert int(m.group(3)) <= 6 and f"model_bytes:{size} " in lines[0]
        assert ("gptq_tries:" in lines[0]) == (method == "gptq")


def test_a_model_too_small_for_the_budget_stops_at_the_finest_step(tmp_path):
    h, model = tiny_model(QUANT_METHOD="rtn")
    lines = []
    size = write_artifact(model, str(tmp_path / "m.ptz"), h, 15_920_000, SIZE_LIMIT, None, lines.append)
    lam = float(re.search(r"step:(\S+)xRMS", lines[0]).group(1))
    assert size < SIZE_LIMIT * 0.9 and lam == pytest.approx(finest_step(model, h), rel=1e-3)
    assert "below the budget window" in lines[0]


@pytest.fixture(scope="module")
def trained(tiny_shards):
    """A tiny GPT trained for 50 steps on the tiny shards with main()'s optimizers, and a val_bpb scorer."""
    # SMEAR=0: the test bed GPTQ's margin over rounding was measured on (the SmearGate's export: test_numerics)
    h = load_hparams({**TINY, **tiny_shards.env, "SMEAR": "0"})
    model, stream, losses = train_tiny(h, tiny_shards.data_path, 50)
    assert losses[-1] < losses[0] - 1
    hessians = collect_hessians(model, (stream.batch(8, h.train_seq_len, 0, 1, "cpu") for _ in range(4)),
                                contextlib.nullcontext())
    val = load_tokens(f"{tiny_shards.data_path}/fineweb_val_*.bin", h.vocab_size)
    luts = byte_luts(spm.SentencePieceProcessor(model_file=tiny_shards.tokenizer_path), h.vocab_size, "cpu")

    @torch.no_grad()
    def score(m):
        return evaluate(lambda x, y: m(x, y, reduction="none"), val, luts, h.train_seq_len, h.train_seq_len, 64)[1]

    return SimpleNamespace(h=h, model=model, hessians=hessians, score=score, pre=score(model))


def loaded(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m


def test_quantization_gap_small_at_fine_steps_and_gptq_better_at_coarse(trained):
    print(f"pre-quantization val_bpb {trained.pre:.4f}")
    for lam, limit in ((0.2, 0.005), (0.8, 0.06)):
        gaps = {}
        for method, hessians in (("rtn", None), ("gptq", trained.hessians)):
            state = dequantize(quantized_tensors(trained.model, trained.h, lam, hessians))
            gaps[method] = trained.score(loaded(trained.model, state)) - trained.pre
        print(f"step {lam} x RMS: quantization gap (bpb) rtn {gaps['rtn']:+.5f}, gptq {gaps['gptq']:+.5f}")
        assert abs(gaps["rtn"]) < limit and gaps["gptq"] <= max(gaps["rtn"], 0) + 0.002
    assert gaps["gptq"] < 0.75 * gaps["rtn"]  # at the coarse step GPTQ's error feedback pays


def test_file_alone_reproduces_the_model_or_fails_cleanly(trained, tmp_path):
    tensors = quantized_tensors(trained.model, trained.h, 0.3, trained.hessians)
    data = pack_artifact(tensors)
    back, meta = unpack_artifact(data)
    assert meta == {}
    assert [(n, r, a.dtype, a.shape) for n, r, a in back] == [(n, r, a.dtype, a.shape) for n, r, a in tensors]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(tensors, back))
    assert b"pickle" not in data and not data[len(train_gpt.ARTIFACT_MAGIC):].startswith(b"PK")
    path = tmp_path / "final_model.ptz"
    path.write_bytes(data)
    torch.manual_seed(123)
    fresh = GPT(trained.h)
    fresh.load_state_dict(load_artifact(str(path)), strict=True)
    in_memory = loaded(trained.model, dequantize(tensors))
    x, y = TokenStream(shard_files(f"{trained.h.data_path}/fineweb_val_*.bin"), trained.h.vocab_size).batch(
        4, trained.h.train_seq_len, 0, 1, "cpu")
    with torch.no_grad():
        assert torch.equal(fresh(x, y, reduction="none"), in_memory(x, y, reduction="none"))
    for (name, a), b in zip(fresh.state_dict().items(), in_memory.state_dict().values()):
        assert torch.equal(a, b), name

    flipped = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 4):
        flipped[i] ^= 0xFF
    one_bit = bytearray(data)
    one_bit[-10] ^= 0x01
    for broken in (data[:len(data) // 2], data[:-1], bytes(flipped), bytes(one_bit), b"x" + data[1:], b""):
        tmp_path.joinpath("broken.ptz").write_bytes(broken)
        with pytest.raises(ValueError, match="broken.ptz is truncated or corrupt"):
            load_artifact(str(tmp_path / "broken.ptz"))


def test_a_matrix_missing_from_the_table_is_refused(tmp_path, monkeypatch):
    """A 2-D parameter added to a block without its MATRICES row: the export refuses it with a one-line reason and
    writes nothing. Adding the row is all it takes for the block to create, export and reload it."""
    h, model = tiny_model()
    model.blocks[0].extra = torch.nn.Parameter(torch.randn(8, 64))
    path = tmp_path / "m.ptz"
    with pytest.raises(ValueError, match=r"^blocks\.0\.extra: a 2-D parameter that MATRICES does not name"):
        write_artifact(model, str(path), h, 0, 10**7, None, lambda line: None)
    assert not path.exists()
    row = train_gpt.Matrix("extra", lambda d, kv, f: 8, False, "extra", None)
    monkeypatch.setattr(train_gpt, "MATRICES", train_gpt.MATRICES + (row,))
    monkeypatch.setattr(train_gpt, "MATRIX_KINDS", train_gpt.MATRIX_KINDS + ("extra",))
    torch.manual_seed(0)
    model = GPT(h)
    assert model.blocks[1].extra.shape == (8, 64) and any(p is model.blocks[1].extra for p in model.matrices())
    write_artifact(model, str(path), h, 0, 10**7, None, lambda line: None)
    state = load_artifact(str(path))
    assert torch.allclose(state["blocks.1.extra"], torch.nn.functional.normalize(model.blocks[1].extra.detach(), dim=-1), atol=0.02)


def rans_cases():
    rng = np.random.default_rng(0)
    return [np.clip(np.round(rng.laplace(0, 3, 20000)), -127, 127).astype(np.int8),  # typical weights
            np.zeros((7, 3), np.int8),  # one value: probability 1
            np.arange(-127, 128, dtype=np.int8).repeat(3),  # every value
            np.array([127, -127], np.int8), np.zeros(0, np.int8),  # the extremes; an empty tensor
            np.clip(np.round(rng.normal(0, 40, 5000)), -127, 127).astype(np.int8)]


def test_rans_round_trip_is_exact_and_near_the_entropy():
    """Every case decodes bit for bit; a real-sized stream costs its order-0 entropy (per tensor) plus the tables and
    the lanes' final states, within 0.5%."""
    cases = rans_cases()
    frame = train_gpt.rans_encode(cases)
    back = train_gpt.rans_decode(frame, [a.size for a in cases])
    assert all(np.array_equal(a.ravel(), b) for a, b in zip(cases, back))
    rng = np.random.default_rng(1)
    big = [np.clip(np.round(rng.laplace(0, s, 300_000)), -127, 127).astype(np.int8) for s in (1.5, 4.0)]
    frame = train_gpt.rans_encode(big)
    entropy_bits = 0.0
    for a in big:
        _, counts = np.unique(a, return_counts=True)
        entropy_bits += float((counts * np.log2(a.size / counts)).sum())
    overhead = 12 + sum(3 + 4 * int(np.abs(a).max()) for a in big) + 4 * (sum(a.size for a in big) // 4096)
    print(f"rANS {len(frame)} bytes, entropy {entropy_bits / 8:.0f} + tables and states {overhead}")
    assert entropy_bits / 8 <= len(frame) <= 1.005 * entropy_bits / 8 + overhead


def test_rans_frame_is_strict():
    """A cut, a flipped bit anywhere (words, tables, states, the lane count) or a wrong tensor size is refused
    with a reason, never decoded into other weights."""
    cases = rans_cases()
    sizes = [a.size for a in cases]
    frame = train_gpt.rans_encode(cases)
    for i in (0, 5, 12, 40, len(frame) // 2, len(frame) - 1):
        bad = bytearray(frame)
        bad[i] ^= 0x10
        with pytest.raises(ValueError, match="rANS"):
            train_gpt.rans_decode(bytes(bad), sizes)
    with pytest.raises(ValueError, match="rANS"):
        train_gpt.rans_decode(frame[:-2], sizes)
    with pytest.raises(ValueError, match="rANS"):
        train_gpt.rans_decode(frame, sizes[:-2] + [sizes[-2] + 1, sizes[-1]])
    # past the checksum (a frame written by a wrong encoder): the decoder's own checks still refuse it
    body = bytearray(frame[4:])
    body[-1] ^= 0x01
    forged = zlib.crc32(bytes(body)).to_bytes(4, "little") + bytes(body)
    with pytest.raises(ValueError, match="initial states|run out"):
        train_gpt.rans_decode(forged, sizes)
