"""int-N export: bounded angular error with unit rows, embedding within its step, renorm helps a trained model,
compressed size per parameter, bit-packing vs int8, and a file that reloads bit-identically or fails cleanly."""
import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm
import torch
import zstandard

from train_gpt import (GPT, MATRIX_KINDS, TokenStream, byte_luts, dequantize_state, evaluate, export_state,
                       load_artifact, load_hparams, load_tokens, make_optimizers, save_artifact, shard_files,
                       write_artifact)

TINY = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64"}


def uniform(bits):
    return dict.fromkeys(MATRIX_KINDS, bits)


def sin_angle(a, b):
    """Row-wise sine of the angle between a and b, in float64 (stable for tiny angles, unlike acos)."""
    a, b = a.double() / a.double().norm(dim=-1, keepdim=True), b.double() / b.double().norm(dim=-1, keepdim=True)
    return (b - (a * b).sum(-1, keepdim=True) * a).norm(dim=-1)


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_block_rows_unit_norm_and_angle_bounded(bits):
    h = load_hparams({**TINY, "VOCAB_SIZE": "512"})
    torch.manual_seed(bits)
    model = GPT(h)  # block matrices start with unit rows
    blob = export_state(model, uniform(bits), 8)
    state = dequantize_state(blob)
    params = dict(model.named_parameters())
    assert sorted(blob["renorm"]) == sorted(n for n, p in params.items() if any(p is m for m in model.matrices()))
    worst = 0.0
    for name in blob["renorm"]:
        w, r = params[name].detach(), state[name]
        assert ((r.double().norm(dim=-1) - 1).abs() < 1e-6).all()
        # Clip 1.0 is a candidate: scale s = fp16(max|w_i| / qmax) leaves no element clipped (fp16 rounding moves
        # max|w_i|/s by < qmax * 2^-11 < 0.5), so every element errs by <= s/2 and the error vector e has
        # |e| <= sqrt(d) s/2, hence sin(angle(w, w + e)) <= sqrt(d) s / (2|w|). quantize_rows keeps the clip with
        # the smallest angle, so its row can only do better; renormalizing does not change the angle.
        qmax, d = 2 ** (bits - 1) - 1, w.size(-1)
        s = (w.abs().amax(-1) / qmax).half().double()
        bound = math.sqrt(d) * s / 2 / w.double().norm(dim=-1)
        ratio = sin_angle(w, r) / bound
        assert (ratio <= 1 + 1e-4).all(), name
        worst = max(worst, ratio.max().item())
    print(f"{bits} bits: max angle / bound over block rows = {worst:.3f}")


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_within_its_step_and_not_renormalized(bits):
    h = load_hparams({**TINY, "VOCAB_SIZE": "512"})
    torch.manual_seed(0)
    model = GPT(h)
    blob = export_state(model, uniform(6), bits)
    w, q, s = model.emb.weight.detach(), blob["q"]["emb.weight"].float(), blob["s"]["emb.weight"].float()
    deq = dequantize_state(blob)["emb.weight"]
    assert "emb.weight" not in blob["renorm"] and torch.equal(deq, q * s)  # exactly q * s: no renormalization
    assert ((deq.norm(dim=-1) - 1).abs() > 1e-3).any()
    # Per row, the clip with the least squared error sets s. Elements within (qmax + 1/2) s round to the nearest
    # step (error <= s/2); the rest are clipped to +-qmax s.
    qmax = 2 ** (bits - 1) - 1
    inside = w.abs() <= (qmax + 0.5) * s
    err = (w - deq).abs()
    assert (err[inside] <= (s / 2).expand_as(w)[inside] * (1 + 1e-5)).all()
    assert torch.equal(deq[~inside], (w.sign() * qmax * s).expand_as(w)[~inside])
    print(f"embedding at {bits} bits: {(~inside).sum().item()} of {w.numel()} elements clipped, "
          f"max error / step = {(err / s).max().item():.3f}")


@pytest.fixture(scope="module")
def trained(tiny_shards):
    """A tiny GPT trained for 50 steps on the tiny shards with main()'s optimizers, and a val_bpb scorer."""
    h = load_hparams({**TINY, **tiny_shards.env})
    torch.manual_seed(0)
    model = GPT(h)
    optimizers = make_optimizers(model, h)
    stream = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin"), h.vocab_size)
    losses = []
    for _ in range(50):
        x, y = stream.batch(8, h.train_seq_len, 0, 1, "cpu")
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.renorm_()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1
    val = load_tokens(f"{tiny_shards.data_path}/fineweb_val_*.bin", h.vocab_size)
    luts = byte_luts(spm.SentencePieceProcessor(model_file=tiny_shards.tokenizer_path), h.vocab_size, "cpu")

    @torch.no_grad()
    def score(m):
        return evaluate(lambda x, y: m(x, y, reduction="none"), val, luts, h.train_seq_len, h.train_seq_len, 64)[1]

    return SimpleNamespace(h=h, model=model, score=score, pre=score(model))


def loaded(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m


def test_quantization_gap_with_and_without_renorm(trained):
    """The roundtrip val_bpb stays close to the pre-quantization one, and renormalizing the dequantized rows is not
    worse than leaving them. (That renorm is strictly closer does not hold reliably at this scale: with per-row
    scales and the angular clip choice, dequantized rows keep their norms within a few percent, and over seeds
    and training lengths the two gaps differ by less than 0.0005 bpb, either way.)"""
    print(f"pre-quantization val_bpb {trained.pre:.4f}")
    for bits, limit in ((4, 0.02), (6, 0.005)):
        blob = export_state(trained.model, uniform(bits), 8)
        states = [dequantize_state(b) for b in (blob, {**blob, "renorm": []})]
        drift = max((states[1][n].norm(dim=-1) - 1).abs().max().item() for n in blob["renorm"])
        gaps = [trained.score(loaded(trained.model, state)) - trained.pre for state in states]
        print(f"{bits} bits: quant gap (bpb) with renorm {gaps[0]:+.5f}, without {gaps[1]:+.5f}; "
              f"max |row norm - 1| without renorm {drift:.4f}")
        assert abs(gaps[0]) < limit and abs(gaps[0]) <= abs(gaps[1]) + 0.001


def pack(q, bits):
    """Bit-pack int8 values in [-2^(bits-1), 2^(bits-1)) into a dense little-endian bit stream."""
    u = (q.flatten().numpy().astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    return np.packbits(np.unpackbits(u[:, None], axis=1, bitorder="little")[:, :bits], bitorder="little")


def unpack(packed, bits, n):
    bit_rows = np.unpackbits(packed, bitorder="little")[:n * bits].reshape(n, bits)
    return np.packbits(bit_rows, axis=1, bitorder="little").ravel().astype(np.int16) - 2 ** (bits - 1)


def test_size_per_parameter_and_bit_packing(trained, tmp_path):
    n_params = sum(p.numel() for p in trained.model.parameters())
    zstd = zstandard.ZstdCompressor(level=22)
    print(f"{n_params} parameters; blocks at N bits, embedding at 8 bits, zstd level 22")
    for bits in (4, 5, 6, 8):
        blob = export_state(trained.model, uniform(bits), 8)
        path = str(tmp_path / f"int{bits}.ptz")
        save_artifact(blob, path, 22)
        size = tmp_path.joinpath(f"int{bits}.ptz").stat().st_size
        line = f"{bits} bits: artifact {size} bytes = {size / n_params:.3f} bytes/param"
        if bits < 8:
            q = torch.cat([blob["q"][name].flatten() for name in blob["renorm"]])
            packed = pack(q, bits)
            assert len(packed) == math.ceil(q.numel() * bits / 8)
            assert np.array_equal(unpack(packed, bits, q.numel()), q.numpy())
            as_int8, as_packed = len(zstd.compress(q.numpy().tobytes())), len(zstd.compress(packed.tobytes()))
            packed_blob = {**blob, "q": {**blob["q"], **{name: torch.from_numpy(pack(blob["q"][name], bits))
                                                         for name in blob["renorm"]}}}
            save_artifact(packed_blob, path, 22)
            packed_size = tmp_path.joinpath(f"int{bits}.ptz").stat().st_size
            line += (f"; block values ({q.numel()}) zstd'd as int8 {as_int8} bytes, bit-packed {as_packed} bytes "
                     f"({as_packed / as_int8 - 1:+.1%}); whole artifact bit-packed {packed_size} bytes "
                     f"({packed_size / size - 1:+.1%})")
        print(line)


def test_file_alone_reproduces_the_model_or_fails_cleanly(trained, tmp_path):
    blob = export_state(trained.model, uniform(trained.h.quant_bits), trained.h.embed_bits)
    path = str(tmp_path / "final_model.ptz")
    save_artifact(blob, path, 22)
    torch.manual_seed(123)
    fresh = GPT(trained.h)
    fresh.load_state_dict(load_artifact(path), strict=True)
    in_memory = loaded(trained.model, dequantize_state(blob))
    x, y = TokenStream(shard_files(f"{trained.h.data_path}/fineweb_val_*.bin"), trained.h.vocab_size).batch(
        4, trained.h.train_seq_len, 0, 1, "cpu")
    with torch.no_grad():
        assert torch.equal(fresh(x, y, reduction="none"), in_memory(x, y, reduction="none"))
    for (name, a), b in zip(fresh.state_dict().items(), in_memory.state_dict().values()):
        assert torch.equal(a, b), name

    data = tmp_path.joinpath("final_model.ptz").read_bytes()
    flipped = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 4):
        flipped[i] ^= 0xFF
    for broken in (data[:len(data) // 2], data[:-1], bytes(flipped)):
        tmp_path.joinpath("broken.ptz").write_bytes(broken)
        with pytest.raises(ValueError, match="broken.ptz is truncated or corrupt"):
            load_artifact(str(tmp_path / "broken.ptz"))


def test_write_artifact_lowers_bits_until_it_fits(tmp_path):
    h = load_hparams({**TINY, "VOCAB_SIZE": "512", "QUANT_BITS": "6"})
    model, path = GPT(h), tmp_path / "final_model.ptz"
    sizes = {}
    for bits in (6, 5, 4):
        save_artifact(export_state(model, uniform(bits), h.embed_bits), str(path), h.zstd_level)
        sizes[bits] = path.stat().st_size
    print("artifact bytes by bits:", sizes)
    assert sizes[6] > sizes[5] > sizes[4]
    assert write_artifact(model, str(path), h, sizes[6]) == uniform(6)
    budget = (sizes[6] + sizes[5]) // 2  # fits only once some kinds, largest first, have lost a bit
    bits = write_artifact(model, str(path), h, budget)
    assert path.stat().st_size <= budget and 5 <= min(bits.values()) and max(bits.values()) == 6
    lowered = [k for k in MATRIX_KINDS if bits[k] == 5]
    assert lowered == list(MATRIX_KINDS[:len(lowered)]) and lowered[0] == "up"
    assert write_artifact(model, str(path), h, sizes[4] - 1) == uniform(4)  # nothing fits: 4 bits, main() says so
    assert path.stat().st_size == sizes[4]
