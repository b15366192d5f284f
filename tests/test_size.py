"""tools/size.py: a row per tensor (or kind) whose parameters add up to the model's and whose bytes, with the shared
rows (the rANS frame's own bytes, the header frame, the magic), add up to the file's exactly; code + file against the
limit; one line and exit 1 for a file that is not an artifact; --models' floor and its stored and zstd references."""
import re
import subprocess
import sys

import torch

from _logs import REPO
from train_gpt import GPT, code_wrapper, load_hparams, write_artifact

SIZE = [sys.executable, str(REPO / "tools" / "size.py")]


def artifact(tmp_path):
    h = load_hparams({"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "VOCAB_SIZE": "512",
                      "QUANT_METHOD": "rtn"})
    torch.manual_seed(0)
    model = GPT(h)
    path = tmp_path / "final_model.ptz"
    write_artifact(model, str(path), h, 0, 60_000, None, lambda line: None)
    return model, path


ROW = re.compile(r"(?m)^(\S+(?: \(step\))?(?: x\d+)?)\s+(unit|rows|step|raw)\s+([\d,]+)\s+\S+\s+[\d.]+\s+([\d,]+)\s")
SHARED = re.compile(r"(?m)^(rANS states and counts|header frame|magic)\s+([\d,]+)\s")


def num(text: str) -> int:
    return int(text.replace(",", ""))


def test_rows_add_up_and_totals_match_the_file(tmp_path):
    """The tensors' rows (int8: table + share of the rANS words; fp16: zstd frame + length) and the shared rows (the
    rANS frame's crc, counts, final states and length; the header frame; the magic) add up to the file exactly, per
    tensor and per kind."""
    import numpy as np
    from train_gpt import ARTIFACT_MAGIC, artifact_frames, unpack_artifact

    model, path = artifact(tmp_path)
    data = path.read_bytes()
    n = sum(p.numel() for p in model.parameters())
    out = subprocess.run(SIZE + [str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    rows = ROW.findall(out.stdout)
    names = [name for name, role, _, _ in rows if role != "step"]
    assert sorted(names) == sorted(dict(model.named_parameters()))
    steps = sum(num(p) for _, role, p, _ in rows if role == "step")
    assert sum(num(p) for _, role, p, _ in rows if role != "step") == n and steps == 512
    file_line = re.search(r"(?m)^the file\s+([\d,]+)\s+([\d,]+)\s", out.stdout)
    assert num(file_line.group(1)) == n + steps
    assert num(file_line.group(2)) == len(data)
    assert "step': 0." in out.stdout or '"step"' in out.stdout  # how it was quantized, from the header

    tensors, _ = unpack_artifact(data)
    frames = artifact_frames(data)
    assert [(name, role) for name, role, _ in tensors] == [(name.removesuffix(" (step)"), role) for name, role, _, _ in rows]
    shared = {name: num(b) for name, b in SHARED.findall(out.stdout)}
    lanes, words = (int(v) for v in np.frombuffer(frames[1][4:12], "<u4"))
    assert shared == {"rANS states and counts": 4 + 8 + 4 * lanes + 4, "header frame": 4 + len(frames[0]),
                      "magic": len(ARTIFACT_MAGIC)}
    int8 = [num(b) for _, role, _, b in rows if role in ("unit", "rows")]
    assert sum(int8) == len(frames[1]) + 4 - shared["rANS states and counts"]  # tables + words, all of them
    assert [num(b) for _, role, _, b in rows if role in ("step", "raw")] == [4 + len(f) for f in frames[2:]]
    assert sum(num(b) for *_, b in rows) + sum(shared.values()) == len(data)  # exact: no rounding left over

    by_kind = subprocess.run(SIZE + [str(path), "--by", "kind", "--script", str(REPO / "train_gpt.py")],
                             capture_output=True, text=True)
    up = sum(b.up.numel() for b in model.blocks)
    assert by_kind.returncode == 0 and re.search(rf"(?m)^up x2\s+unit\s+{up:,}\s", by_kind.stdout)
    kind_rows = ROW.findall(by_kind.stdout)
    assert sum(num(b) for *_, b in kind_rows) + sum(num(b) for _, b in SHARED.findall(by_kind.stdout)) == len(data)
    total = len(code_wrapper((REPO / "train_gpt.py").read_text()).encode()) + len(data)  # code as counted
    assert f"{total:,}" in by_kind.stdout and "bytes to the limit" in by_kind.stdout


def test_not_an_artifact_is_one_line_and_exit_1(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    _, path = artifact(tmp_path)
    data = path.read_bytes()
    for i, broken in enumerate((data[:-5], b"hello")):
        (tmp_path / f"bad{i}.ptz").write_bytes(broken)
    argvs = [[str(tmp_path / "bad0.ptz")], [str(tmp_path / "bad1.ptz")], [str(tmp_path / "none.ptz")], ["--help"],
             [str(path), "--by", "layer"]]
    with ThreadPoolExecutor(5) as pool:  # side by side: each run imports torch
        outs = list(pool.map(lambda argv: subprocess.run(SIZE + argv, capture_output=True, text=True), argvs))
    for out in outs[:2]:
        assert out.returncode == 1 and out.stdout == ""
        assert len(out.stderr.splitlines()) == 1 and "is not a loadable artifact" in out.stderr
    assert outs[2].returncode == 1 and "cannot read" in outs[2].stderr
    assert outs[3].returncode == 0 and outs[4].returncode == 2


def test_models_floor_on_a_tiny_artifact(tmp_path):
    """--models: a row per kind (and the fp16 entries) prints; the stored bytes (int8: rANS table + words share;
    fp16: the zstd frame) and the shared parts add up to the file; zstd_bytes is the tensor's own zstd frame (v2's);
    an int8 tensor's rANS code length is at least its order-0 entropy and within 0.5% of it; the order-0 entropy is
    the hand-computed one; no model that conditions on more (a column, a row, the previous value) is worse before its
    parameter costs; a single distribution per tensor (G0) or per column (Gcol) is never better than the histogram
    it stands for."""
    import json
    from collections import Counter
    import math

    import numpy as np
    import zstandard
    from train_gpt import ARTIFACT_MAGIC, ZSTD_PARAMS, artifact_frames, unpack_artifact

    model, path = artifact(tmp_path)
    out = subprocess.run(SIZE + [str(path), "--models", "--json", str(tmp_path / "floor.json")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    for kind in ("q", "k", "v", "o", "up", "down", "emb", "all int8", "alpha_attn", "mlp_gain", "emb (step)", "all fp16"):
        assert re.search(rf"(?m)^\| {re.escape(kind)} \| ", out.stdout), kind
    assert "| kind | values | stored | zstd | H0 |" in out.stdout
    rep = json.loads((tmp_path / "floor.json").read_text())
    data = path.read_bytes()
    tensors, _ = unpack_artifact(data)
    frames = artifact_frames(data)
    zstd = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(write_checksum=1, **ZSTD_PARAMS))
    fp16_frames = iter(frames[2:])
    lanes, words = (int(v) for v in np.frombuffer(frames[1][4:12], "<u4"))
    assert rep["rans"]["lanes"] == lanes and rep["rans"]["words_bytes"] == 2 * words
    # the stored bytes, the fp16 frames' lengths and the shared parts are the file, to the byte
    assert (sum(t["stored_bytes"] for t in rep["tensors"]) + 4 * len(frames[2:]) + sum(rep["shared_bytes"].values())
            == rep["file_bytes"] == len(data))
    assert rep["shared_bytes"]["magic"] == len(ARTIFACT_MAGIC)
    ints = 0
    for (name, role, a), row in zip(tensors, rep["tensors"], strict=True):
        assert row["name"] == name and row["values"] == a.size
        assert row["zstd_bytes"] == len(zstd.compress(np.ascontiguousarray(a).tobytes()))  # the v2 frame of it alone
        if role not in ("unit", "rows"):
            assert row["stored_bytes"] == len(next(fp16_frames)) == row["zstd_bytes"]  # v3 stores fp16 so too
            if a.size == 1:  # logit_scale: a high byte alone costs KT's log2(256), the low byte 8 bits
                assert abs(row["hi_byte_bits"] - 8) < 1e-9 and abs(row["hi_byte_param_bits"] - 8) < 1e-9
            continue
        ints += 1
        m = row["models"]
        n = a.size
        hand = sum(c * math.log2(n / c) for c in Counter(a.ravel().tolist()).values())  # n x H0, by hand
        assert abs(m["H0"]["symbol_bits"] - hand) <= 1e-9 * hand
        # rANS: a table of 1 + 2(2m+1) bytes; the code length under it is at least the empirical entropy (Gibbs) and
        # within 0.5% of it (frequencies of 2^14); the words' share is that code length to 0.5% (plus its rounding)
        assert row["table_bytes"] == 1 + 2 * (2 * row["max_int"] + 1)
        assert hand * (1 - 1e-12) <= row["code_bits"] <= 1.005 * hand
        assert row["stored_bytes"] == row["table_bytes"] + row["words_bytes"]
        assert abs(row["stored_bytes"] - (hand / 8 + row["table_bytes"])) <= 0.005 * hand / 8 + 1
        for richer in ("Hcol", "Hrow", "H1row", "H1col"):
            assert m[richer]["symbol_bits"] <= m["H0"]["symbol_bits"] + 1e-6, (name, richer)
            assert m[richer]["param_bits"] >= 0
        assert m["G0"]["symbol_bits"] >= m["H0"]["symbol_bits"] - 1e-6
        assert m["Gcol"]["symbol_bits"] >= m["Hcol"]["symbol_bits"] - 1e-6
        for fam in "LG":
            assert m[f"{fam}rc"]["symbol_bits"] <= m[f"{fam}col"]["symbol_bits"] * (1 + 1e-9)  # refined from it
        assert m["Gcol"]["param_bits"] == 16 * a.shape[1] and m["Grc"]["param_bits"] == 16 * sum(a.shape)
        best = min((k for k in m if k != "best"), key=lambda k: m[k]["symbol_bits"] + m[k]["param_bits"])
        assert m["best"]["model"] == best
    assert sum(t.get("words_bytes", 0) for t in rep["tensors"]) == 2 * words  # the shares are the words, exactly
    assert sum(t.get("table_bytes", 0) for t in rep["tensors"]) == rep["rans"]["tables_bytes"]
    assert ints == 13 and rep["kinds"]["up"]["tensors"] == 2
    kind_h0 = sum(t["models"]["H0"]["symbol_bits"] for t in rep["tensors"] if t["kind"] == "q")
    assert rep["kinds"]["q"]["models"]["H0"]["symbol_bits"] == kind_h0


def test_models_floor_finds_column_scales():
    """On columns of very different scales a per-column scale pays its 2 bytes a column; on i.i.d. values it
    does not, and the histogram's costs grow with its contexts."""
    import numpy as np
    import size

    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(-1.5, 1.5, 64))
    for cols, iid in ((scales, False), (np.full(64, 2.0), True)):
        q = np.clip(np.round(rng.standard_normal((512, 64)) * cols), -127, 127).astype(np.int8)
        f = size.coder_floor(q)
        total = {k: sum(v) for k, v in f.items()}
        if iid:
            assert total["H0"] < total["Gcol"] and total["H0"] < total["Hcol"] and total["H0"] < total["H1row"]
        else:
            assert total["Gcol"] < total["H0"] and total["Grc"] < total["H0"] and total["Gcol"] < total["Lcol"]
        assert f["Hcol"][1] > 20 * f["H0"][1]
    a = np.arange(3000)
    for fam in "LG":
        for s in (0.3, 2.5, 40.0):
            p = size.laplace_gauss_p(a, s, fam)
            assert abs(p[0] + 2 * p[1:].sum() - 1) < 1e-9  # a distribution over the integers
