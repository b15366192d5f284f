"""Where the bytes of an artifact go: one row per tensor of final_model.ptz.

    python tools/size.py final_model.ptz [--script train_gpt.py] [--by kind]
    python tools/size.py final_model.ptz --models [--json floor.json]

The artifact (format v3: train_gpt.py, above ARTIFACT_MAGIC) is the magic line, then frames, each after its 4-byte
length: the zstd JSON header; one rANS frame holding every int8 tensor (roles unit, rows) in header order; one zstd
frame per fp16 tensor (roles step, raw) in header order. Columns: parameters, role (unit: int8 rows renormalized on
load, no scale; rows: int8 times an fp16 step per row; step: those steps; raw: fp16), the largest |integer| (int8
roles), the order-0 entropy of the values in bits per parameter, the tensor's bytes in the file, bytes per parameter,
and the share of the 16,000,000-byte limit.
  fp16 tensor  its zstd frame and the frame's 4-byte length
  int8 tensor  its share of the rANS frame: its frequency table (1 + 2(2m+1) bytes, m its max |q|) and a share of
               the frame's words (the coder's 16-bit output) in proportion to its code length under its own table
               (the sum over its symbols of RANS_BITS - log2 f(q) bits). The shares are whole bytes that sum to the
               words' bytes exactly (the cumulative proportions rounded: each share within a byte of its proportional
               value). The words fall short of the summed code lengths by what the final states hold (a few bits a
               lane), so a share is its tensor's code length to ~0.1%; --models --json has the exact code lengths.
What no tensor owns has a row of its own: "rANS states and counts" (the rANS frame's crc 4, lane and word counts 8,
final states 4 a lane, and its length 4), "header frame" (with its length) and "magic". The tensors and these rows
add up to the file exactly, with no rounding left over (checked: exit 1 if not). With --script, the code bytes are
added to the total as the records count them (the script's self-extracting wrapper: train_gpt.code_wrapper). Exit 0
when the file loads, 1 with one line when it does not (or the total is over the limit), 2 on bad arguments.

--models: the entropy-coding floor of the int8 symbols, per kind of tensor (q, k, v, o, up, down, emb; the fp16
"raw" gains and "step" entries separately), in bits per value and bytes, under models a coder could use. Each model
is fitted per tensor; "params" is what its own parameters cost, "total" symbols + params, "saving" is against the
bytes as stored (an int8 tensor's table and words share, as in the table above; an fp16 tensor's zstd frame), all
without the shared parts (frame lengths, the rANS frame's crc, counts and final states), which any coder keeps. Axes
are the stored ones: "col" is axis 1 (the model dim for every block matrix: the input feature of q, k, v, up and of
the tied head; the output feature of o and down, whose stored rows are their input features), "row" is axis 0.
  stored   the bytes as stored (v3): for int8 its symbols are its share of the rANS words, its params its table
  zstd     what zstd with train_gpt.ZSTD_PARAMS (and a checksum) makes of the tensor's bytes alone: the v2 format's
           frame, and still the fp16 tensors' frame (there stored = zstd)
  H0       one histogram per tensor: symbols at its empirical (order-0) entropy; params: the adaptive (KT) code's
           regret over it, what storing the counts compactly costs (alphabet -M..M, M = the tensor's max |q|)
  G0       one discretized Gaussian per tensor (mean 0, one fp16 scale, as Gcol below)
  Hcol     one histogram per column (Hrow: per row), the same costs per column (row)
  Lcol     a discretized Laplace per column, mean 0, its scale fitted to the column's code length (Gcol: Gaussian;
           Lrow, Grow: per row); params 2 bytes (fp16) per scale; bits = -log2 p(q) with p mixed with 2^-16 of the
           uniform over -M..M (as a 16-bit coder's floor)
  Lrc      Laplace with scale r_i x c_j (Grc: Gaussian), both fp16, 2 bytes each; started from Lcol's scales and
           refined by alternating grid searches over the rows' and the columns' scales (each never raising the bits)
  H1row    order 1: the histogram of a value given the previous value in its row (H1col: in its column); KT costs
  best     per tensor, the model with the smallest total
raw: the stored zstd frame against the fp16 bits stored plainly and against the high byte coded at its order-0
entropy (KT) plus the low byte plain. --json writes every number: per tensor stored_bytes and zstd_bytes (int8 also
table_bytes, words_bytes and code_bits, its exact code length under the stored table), per kind, the rANS frame's
parts ("rans") and the shared bytes ("shared_bytes": the tensors' stored_bytes, 4 bytes per fp16 frame's length and
these add up to file_bytes). About 6 s for a 0.9M-parameter model, 2.5 minutes at the default shape (36.7M), on one
CPU thread.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import zstandard
from scipy.special import erfc, gammaln

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_gpt import (ARTIFACT_MAGIC, RANS_BITS, SIZE_LIMIT, ZSTD_PARAMS, artifact_frames, code_wrapper,  # noqa: E402
                       unpack_artifact)

INT8_ROLES = ("unit", "rows")


def entropy_bits(a: np.ndarray) -> float:
    """Order-0 entropy of the values of a, in bits per value."""
    _, counts = np.unique(a, return_counts=True)
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log2(p)).sum()))


def kind_of(name: str) -> str:
    """blocks.3.up -> up; emb.weight -> emb.weight; blocks.0.alpha_attn -> alpha_attn."""
    return name.split(".", 2)[2] if name.startswith("blocks.") else name


def split_bytes(total: int, weights: list[float]) -> list[int]:
    """total split into whole shares in proportion to weights (equal shares when they are all 0): the cumulative
    proportions rounded, so the shares sum to total exactly and each is within a byte of its proportional value."""
    w = np.asarray(weights, np.float64)
    if not w.size:
        return []
    if w.sum() <= 0:
        w = np.ones_like(w)
    ends = np.round(total * np.cumsum(w) / w.sum()).astype(np.int64)
    ends[-1] = total
    return np.diff(ends, prepend=0).tolist()


def stored_parts(tensors: list, frames: list[bytes]) -> tuple[list[dict], dict, dict]:
    """What each tensor (header order) holds of the file, without frame lengths: {"stored_bytes"}, for int8 also
    "table_bytes" (its frequency table as stored in the rANS frame), "code_bits" (its code length under that table)
    and "words_bytes" (its share of the frame's words: split_bytes by code_bits); the rANS frame's parts; and the
    shared bytes {row: bytes} that, with the stored bytes and 4 per fp16 frame, add up to the file."""
    ints = [a for _, _, a in tensors if a.dtype == np.int8]
    fp16 = [a for _, _, a in tensors if a.dtype != np.int8]
    if len(frames) != 2 + len(fp16):
        raise ValueError(f"{len(frames)} frames for {len(ints)} int8 and {len(fp16)} fp16 tensors (v3: header, rANS, fp16)")
    body = memoryview(frames[1])[4:]
    lanes, n_words = (int(v) for v in np.frombuffer(body[:8], "<u4"))
    at, coded = 8, []
    for a in ints:  # the tables as stored (rans_encode writes rans_table(a): max |q|, then 2m+1 uint16 frequencies)
        m = body[at]
        f = np.frombuffer(body[at + 1:at + 3 + 4 * m], "<u2").astype(np.float64)
        at += 3 + 4 * m
        bits = float((RANS_BITS - np.log2(f[a.ravel().astype(np.int64) + m])).sum()) if a.size else 0.0
        coded.append({"table_bytes": 3 + 4 * m, "code_bits": bits})
    if at + 4 * lanes + 2 * n_words != len(body):
        raise ValueError("the rANS frame's length does not fit its tables, lanes and words")
    for c, share in zip(coded, split_bytes(2 * n_words, [c["code_bits"] for c in coded])):
        c["words_bytes"] = share
        c["stored_bytes"] = c["table_bytes"] + share
    coded_it, fp16_frames = iter(coded), iter(frames[2:])
    per = [next(coded_it) if a.dtype == np.int8 else {"stored_bytes": len(next(fp16_frames))} for _, _, a in tensors]
    rans = {"lanes": lanes, "words_bytes": 2 * n_words, "states_bytes": 4 * lanes,
            "tables_bytes": sum(c["table_bytes"] for c in coded), "fixed_bytes": 4 + 8 + 4 * lanes + 4}
    shared = {"rANS states and counts": rans["fixed_bytes"], "header frame": 4 + len(frames[0]),
              "magic": len(ARTIFACT_MAGIC)}
    return per, rans, shared


def rows(tensors: list, parts: list[dict], by_kind: bool) -> list[dict]:
    """One row per tensor (its bytes: an int8 tensor's table and words share in the rANS frame, an fp16 tensor's
    zstd frame and the frame's 4-byte length), or per kind."""
    out = []
    for (name, role, a), part in zip(tensors, parts):
        out.append({"name": f"{name} ({role})" if role == "step" else name, "role": role, "params": a.size,
                    "max_int": int(np.abs(a).max()) if role in INT8_ROLES and a.size else None,
                    "entropy": entropy_bits(a) if a.size > 1 else 0.0,
                    "bytes": part["stored_bytes"] + (0 if a.dtype == np.int8 else 4), "values": a})
    if not by_kind:
        return out
    groups = defaultdict(list)
    for r in out:
        groups[(kind_of(r["name"].split(" ")[0]) + (" (step)" if r["role"] == "step" else ""), r["role"])].append(r)
    merged = []
    for (kind, role), rs in groups.items():
        values = np.concatenate([r["values"].ravel() for r in rs])
        merged.append({"name": f"{kind} x{len(rs)}" if len(rs) > 1 else kind, "role": role, "params": values.size,
                       "max_int": max(r["max_int"] for r in rs) if rs[0]["max_int"] is not None else None,
                       "entropy": entropy_bits(values), "bytes": sum(r["bytes"] for r in rs), "values": values})
    return merged


# ------------------------------ --models: the entropy-coding floor

MODELS = ("H0", "G0", "Hcol", "Hrow", "Lcol", "Gcol", "Lrow", "Grow", "Lrc", "Grc", "H1row", "H1col")
EPS = 2.0 ** -16  # the parametric models' floor: (1 - EPS) p + EPS uniform over -M..M
LN2 = np.log(2.0)


def counts_by(ctx: np.ndarray, sym: np.ndarray, n_ctx: int, k: int) -> np.ndarray:
    """(n_ctx, k) histogram of the symbols 0..k-1 in each context 0..n_ctx-1."""
    return np.bincount(ctx.ravel().astype(np.int64) * k + sym.ravel(), minlength=n_ctx * k).reshape(n_ctx, k)


def empirical_bits(counts: np.ndarray) -> float:
    """Sum over contexts (rows of counts) of n x the context's empirical entropy: the code length with each
    context's own frequencies, known for free."""
    counts = np.asarray(counts, np.float64)
    n = counts.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(counts > 0, counts * np.log2(n / np.where(counts > 0, counts, 1)), 0.0).sum())


def kt_bits(counts: np.ndarray, k: int) -> float:
    """The adaptive Krichevsky-Trofimov code length (add 1/2 over an alphabet of k) of each context's symbols,
    summed: what a coder that learns each context's counts as it goes pays, its regret over empirical_bits the
    price of the counts (about (k - 1)/2 log2 n bits per context)."""
    counts = np.asarray(counts, np.float64)
    n = counts.sum(-1)
    used = n > 0
    bits = (gammaln(n[used] + k / 2) - gammaln(k / 2)).sum() - (gammaln(counts[used] + 0.5) - gammaln(0.5)).sum()
    return float(bits / LN2)


def laplace_gauss_p(a: np.ndarray, s: np.ndarray, family: str) -> np.ndarray:
    """P(q) for |q| = a under a discretized Laplace (scale b = s) or Gaussian (std s), mean 0: the mass of
    [q - 1/2, q + 1/2] (scales below 0.05 count as 0.05)."""
    a, s = np.asarray(a, np.float64), np.maximum(np.asarray(s, np.float64), 0.05)
    with np.errstate(over="ignore", under="ignore"):
        if family == "L":
            return np.where(a == 0, -np.expm1(-0.5 / s), 0.5 * np.exp(-(a - 0.5) / s) * -np.expm1(-1.0 / s))
        z = 1.0 / (s * np.sqrt(2.0))
        return np.where(a == 0, 1.0 - erfc(0.5 * z), 0.5 * (erfc((a - 0.5) * z) - erfc((a + 0.5) * z)))


def code_bits(a, s, family: str, k: int) -> np.ndarray:
    """-log2 of the model's probability of each value (|q| = a, scale s), floored by EPS of the uniform over k."""
    return -np.log2((1 - EPS) * laplace_gauss_p(a, s, family) + EPS / k)


def f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).astype(np.float16).astype(np.float64)


def fit_scales(abs_counts: np.ndarray, family: str, k: int) -> tuple[np.ndarray, float]:
    """Per context (row of abs_counts, the counts of |q| = 0..M): the fp16 scale of the smallest code length, by a
    coarse (x e^-1.6..e^1.6) then a fine log grid around the moment estimate (mean |q| or RMS). Returns (scales,
    total bits)."""
    a = np.arange(abs_counts.shape[1], dtype=np.float64)
    n = np.maximum(abs_counts.sum(-1), 1)
    m1, m2 = (abs_counts * a).sum(-1) / n, (abs_counts * a * a).sum(-1) / n
    s0 = np.maximum(m1 if family == "L" else np.sqrt(m2), 0.05)  # rounding can move the fit either way: a wide grid
    for width, points in ((1.6, 65), (0.06, 13)):
        cand = f16(s0[:, None] * np.exp(np.linspace(-width, width, points))[None, :])  # (ctx, G)
        bits = (abs_counts[:, None, :] * code_bits(a[None, None, :], cand[:, :, None], family, k)).sum(-1)
        best = bits.argmin(-1)
        s0 = cand[np.arange(len(cand)), best]
    return s0, float(bits[np.arange(len(cand)), best].sum())


def fit_row_col(a: np.ndarray, col: np.ndarray, family: str, k: int,
                rounds=(0.25, 0.08, 0.025)) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale r_i x c_j for value (i, j) (a = |q|, rows x cols), both fp16: from r = 1 and c = `col`, alternating
    grid searches (5 multipliers, 1 among them, so no step raises the bits) over each row's r, then each column's c.
    Returns (bits, r, c)."""
    r, c = np.ones(a.shape[0]), f16(col)
    for width in rounds:
        grid = np.exp(np.linspace(-width, width, 5))
        for axis in (0, 1):
            own = r if axis == 0 else c
            cand = f16(own[:, None] * grid[None, :])  # (len, G)
            bits = np.stack([code_bits(a, (cand[:, g][:, None] * c[None, :]) if axis == 0 else
                                       (r[:, None] * cand[:, g][None, :]), family, k).sum(1 - axis)
                             for g in range(len(grid))], -1)
            own = cand[np.arange(len(cand)), bits.argmin(-1)]
            r, c = (own, c) if axis == 0 else (r, own)
    return float(code_bits(a, r[:, None] * c[None, :], family, k).sum()), r, c


def coder_floor(q: np.ndarray) -> dict:
    """{model: (symbol bits, parameter bits)} for one int8 matrix (2-D) as stored."""
    q = q.astype(np.int64).reshape(q.shape[0], -1)
    rows_n, cols_n = q.shape
    m = int(np.abs(q).max())
    k, a = 2 * m + 1, np.abs(q)
    sym = q + m  # 0..k-1
    out = {}
    for name, counts in (("H0", counts_by(np.zeros_like(sym), sym, 1, k)),
                         ("Hcol", counts_by(np.broadcast_to(np.arange(cols_n), q.shape), sym, cols_n, k)),
                         ("Hrow", counts_by(np.broadcast_to(np.arange(rows_n)[:, None], q.shape), sym, rows_n, k))):
        emp = empirical_bits(counts)
        out[name] = (emp, kt_bits(counts, k) - emp)
    out["G0"] = (fit_scales(counts_by(np.zeros_like(a), a, 1, m + 1), "G", k)[1], 16.0)
    col_abs = counts_by(np.broadcast_to(np.arange(cols_n), q.shape), a, cols_n, m + 1)
    row_abs = counts_by(np.broadcast_to(np.arange(rows_n)[:, None], q.shape), a, rows_n, m + 1)
    for fam in ("L", "G"):
        col_s, bits = fit_scales(col_abs, fam, k)
        out[f"{fam}col"] = (bits, 16.0 * cols_n)
        out[f"{fam}row"] = (fit_scales(row_abs, fam, k)[1], 16.0 * rows_n)
        out[f"{fam}rc"] = (fit_row_col(a.astype(np.float64), col_s, fam, k)[0], 16.0 * (rows_n + cols_n))
    for name, prev, cur in (("H1row", np.concatenate([np.full((rows_n, 1), k), sym[:, :-1]], 1), sym),
                            ("H1col", np.concatenate([np.full((1, cols_n), k), sym[:-1]], 0), sym)):
        counts = counts_by(prev, cur, k + 1, k)  # context k: the row's (column's) first value
        emp = empirical_bits(counts)
        out[name] = (emp, kt_bits(counts, k) - emp)
    return out


def raw_floor(a: np.ndarray) -> tuple[float, float]:
    """(symbol bits, parameter bits) for fp16 values: the high byte (sign, exponent, 2 mantissa bits) at its
    order-0 entropy with KT's regret, the low byte plain."""
    hi = (np.ascontiguousarray(a, np.float16).view(np.uint16) >> 8).astype(np.int64).ravel()
    counts = np.bincount(hi, minlength=256)[None, :]
    emp = empirical_bits(counts)
    return emp + 8.0 * hi.size, kt_bits(counts, 256) - emp


def floor_report(tensors: list, parts: list[dict], rans: dict, shared: dict, header_bytes: int) -> dict:
    """Per tensor and per kind: values, the bytes as stored and as zstd alone, and each model's symbol and parameter
    bits (int8 roles), or the fp16 floor (raw, step)."""
    zstd = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(write_checksum=1, **ZSTD_PARAMS))
    per_tensor, kinds = [], {}
    for (name, role, arr), part in zip(tensors, parts):
        kind = kind_of(name).removesuffix(".weight") + (" (step)" if role == "step" else "")
        row = {"name": name, "kind": kind, "role": role, "shape": list(arr.shape), "values": int(arr.size), **part,
               "zstd_bytes": len(zstd.compress(np.ascontiguousarray(arr).tobytes()))}
        if role in INT8_ROLES:
            row["max_int"] = int(np.abs(arr).max())
            floor = coder_floor(arr)
            row["models"] = {mname: {"symbol_bits": b, "param_bits": pb} for mname, (b, pb) in floor.items()}
            best = min(floor, key=lambda mname: sum(floor[mname]))
            row["models"]["best"] = {"symbol_bits": floor[best][0], "param_bits": floor[best][1], "model": best}
        else:
            bits, pbits = raw_floor(arr)
            row["fp16_bits"] = 16.0 * arr.size
            row["hi_byte_bits"], row["hi_byte_param_bits"] = bits, pbits
        per_tensor.append(row)
        g = kinds.setdefault(kind, {"role": role, "tensors": 0, "values": 0, "stored_bytes": 0, "zstd_bytes": 0})
        g["tensors"] += 1
        for key in ("values", "stored_bytes", "zstd_bytes", "table_bytes", "words_bytes", "code_bits"):
            if key in row:
                g[key] = g.get(key, 0) + row[key]
        if "models" in row:
            ms = g.setdefault("models", {})
            for mname, v in row["models"].items():
                t = ms.setdefault(mname, {"symbol_bits": 0.0, "param_bits": 0.0})
                t["symbol_bits"] += v["symbol_bits"]
                t["param_bits"] += v["param_bits"]
        else:
            for key in ("fp16_bits", "hi_byte_bits", "hi_byte_param_bits"):
                g[key] = g.get(key, 0.0) + row[key]
    return {"tensors": per_tensor, "kinds": kinds, "header_bytes": header_bytes, "rans": rans, "shared_bytes": shared}


REFS = ("stored", "zstd")  # the reference columns of the --models tables, before the models


def floor_tables(rep: dict) -> str:
    """The --models report as markdown tables."""
    ints = {kd: g for kd, g in rep["kinds"].items() if "models" in g}
    names = MODELS + ("best",)
    total = {key: sum(g[key] for g in ints.values()) for key in ("values", "stored_bytes", "zstd_bytes", "table_bytes")}
    total["models"] = {mn: {key: sum(g["models"][mn][key] for g in ints.values()) for key in ("symbol_bits", "param_bits")}
                       for mn in names}
    rows = list(ints.items()) + [("all int8", total)]

    def tab(title: str, cell) -> list[str]:
        cols = ["kind", "values"] + list(REFS) + list(names)
        lines = [f"{title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for kd, g in rows:
            lines.append(f"| {kd} | {g['values']:,} | " + " | ".join(cell(g, col) for col in REFS + names) + " |")
        return lines + [""]

    def total_bytes(g, col) -> float:
        return g[f"{col}_bytes"] if col in REFS else sum(g["models"][col].values()) / 8

    def bits_sym(g, col):
        if col in REFS:  # stored: the words' share (its table is its parameters); zstd: the whole frame
            return f"{(g['stored_bytes'] - g['table_bytes'] if col == 'stored' else g['zstd_bytes']) * 8 / g['values']:.3f}"
        return f"{g['models'][col]['symbol_bits'] / g['values']:.3f}"

    def param_bytes(g, col):
        return f"{g['table_bytes']:,}" if col == "stored" else "-" if col == "zstd" else f"{g['models'][col]['param_bits'] / 8:,.0f}"

    def bits_total(g, col):
        return f"{total_bytes(g, col) * 8 / g['values']:.3f}"

    def bytes_total(g, col):
        return f"{total_bytes(g, col):,.0f}"

    def saving(g, col):
        if col == "stored":
            return "0"
        sv = g["stored_bytes"] - total_bytes(g, col)
        return f"{sv:+,.0f} ({sv / g['stored_bytes']:+.2%})"

    lines = tab("bits per value, symbols only (before parameter costs; stored: the rANS words' share)", bits_sym)
    lines += tab("bytes of each model's own parameters (stored: the rANS tables)", param_bytes)
    lines += tab("bits per value, total (symbols + parameters)", bits_total)
    lines += tab("bytes, total (symbols + parameters)", bytes_total)
    lines += tab("saving against the bytes as stored (rANS: tables + words share; bytes, and as a fraction of the "
                 "kind's stored bytes)", saving)
    best = {}
    for t in rep["tensors"]:
        if "models" in t:
            best[t["models"]["best"]["model"]] = best.get(t["models"]["best"]["model"], 0) + 1
    sv = total["stored_bytes"] - sum(total["models"]["best"].values()) / 8
    zs = total["stored_bytes"] - total["zstd_bytes"]
    lines += [f"best model per tensor: {', '.join(f'{mn} x{n}' for mn, n in sorted(best.items()))}; all int8 together: "
              f"{sv:+,.0f} bytes against stored ({sv / SIZE_LIMIT:.3%} of {SIZE_LIMIT:,}); zstd alone (v2): {zs:+,.0f}", ""]
    other = [(kd, g) for kd, g in rep["kinds"].items() if "models" not in g]
    lines += ["fp16 entries (raw, step): stored (their zstd frames), plain fp16, and the high byte at its order-0 "
              "entropy (KT) + the low byte plain", "",
              "| kind | role | values | stored bytes | stored bits/value | fp16 bytes | hi-byte coder bytes | bits/value | saving vs stored |",
              "|---|---|---|---|---|---|---|---|---|"]
    for kd, g in other:
        hb = (g["hi_byte_bits"] + g["hi_byte_param_bits"]) / 8
        lines.append(f"| {kd} | {g['role']} | {g['values']:,} | {g['stored_bytes']:,} | {g['stored_bytes'] * 8 / g['values']:.3f} | "
                     f"{g['fp16_bits'] / 8:,.0f} | {hb:,.0f} | {hb * 8 / g['values']:.3f} | {g['stored_bytes'] - hb:+,.0f} |")
    z = sum(g["stored_bytes"] for _, g in other)
    hb = sum((g["hi_byte_bits"] + g["hi_byte_param_bits"]) / 8 for _, g in other)
    r = rep["rans"]
    lines += [f"| all fp16 | | {sum(g['values'] for _, g in other):,} | {z:,} | | {sum(g['fp16_bits'] for _, g in other) / 8:,.0f} | "
              f"{hb:,.0f} | | {z - hb:+,.0f} |", "",
              f"header frame: {rep['header_bytes']:,} bytes; rANS frame: {r['tables_bytes']:,} bytes of tables, "
              f"{r['words_bytes']:,} of words, {r['states_bytes']:,} of final states ({r['lanes']} lanes), 12 of crc and "
              f"counts; frame lengths: 4 bytes x {sum('models' not in t for t in rep['tensors']) + 2}"]
    return "\n".join(lines)


def table(rs: list[dict], shared: dict, lanes: int, file_bytes: int, code_bytes: int | None, meta: dict) -> str:
    head = f"{'tensor':<28} {'role':<5} {'params':>10} {'max|q|':>6} {'H bits':>6} {'bytes':>10} {'B/param':>7} {'share':>6}"
    lines = [f"quantized by: {meta}" if meta else "quantized by: (not recorded)", head, "-" * len(head)]
    for r in rs:
        lines.append(f"{r['name']:<28} {r['role']:<5} {r['params']:>10,} {r['max_int'] if r['max_int'] is not None else '-':>6} "
                     f"{r['entropy']:>6.3f} {r['bytes']:>10,} {r['bytes'] / max(r['params'], 1):>7.4f} "
                     f"{r['bytes'] / SIZE_LIMIT:>6.2%}")
    params, alone = sum(r["params"] for r in rs), sum(r["bytes"] for r in rs)
    notes = {"rANS states and counts": f"crc 4, counts 8, {lanes} lanes' final states x 4, frame length 4",
             "header frame": "zstd JSON, with its length 4", "magic": ARTIFACT_MAGIC.decode().strip()}
    lines += ["-" * len(head),
              f"{'tensors':<34} {params:>10,} {'':>6} {'':>6} {alone:>10,} {alone / params:>7.4f} {alone / SIZE_LIMIT:>6.2%}"
              "   (int8: rANS table + words share; fp16: zstd frame + length)"]
    lines += [f"{name:<34} {'':>10} {'':>6} {'':>6} {n:>10,} {'':>7} {n / SIZE_LIMIT:>6.2%}   ({notes[name]})"
              for name, n in shared.items()]
    lines += ["-" * len(head),
              f"{'the file':<34} {params:>10,} {'':>6} {'':>6} {file_bytes:>10,} {file_bytes / params:>7.4f} {file_bytes / SIZE_LIMIT:>6.2%}"
              "   (the rows above, exactly)"]
    if code_bytes is not None:
        total = code_bytes + file_bytes
        lines.append(f"{'code + file (the artifact)':<34} {'':>10} {'':>6} {'':>6} {total:>10,} {'':>7} {total / SIZE_LIMIT:>6.2%}"
                     f"   ({SIZE_LIMIT - total:+,} bytes to the limit)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="final_model.ptz")
    p.add_argument("--script", type=Path, help="train_gpt.py of the run: adds the code bytes to the total")
    p.add_argument("--by", choices=("tensor", "kind"), default="tensor", help="one row per tensor, or per kind of "
                   "tensor summed over layers (default: %(default)s)")
    p.add_argument("--models", action="store_true", help="the entropy-coding floor per kind under each model (below)")
    p.add_argument("--json", type=Path, help="with --models: write every number to this file")
    args = p.parse_args(argv)
    try:
        data = args.artifact.read_bytes()
        code_bytes = len(code_wrapper(args.script.read_text(encoding="utf-8")).encode()) if args.script else None
    except OSError as e:
        print(f"size.py: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        tensors, meta = unpack_artifact(data)
        frames = artifact_frames(data)
        parts, rans, shared = stored_parts(tensors, frames)
    except Exception as e:
        print(f"size.py: {args.artifact} is not a loadable artifact ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    counted = sum(pt["stored_bytes"] for pt in parts) + 4 * (len(frames) - 2) + sum(shared.values())
    if counted != len(data):  # the accounting is exact: anything else is a format this tool does not know
        print(f"size.py: the rows add up to {counted:,} bytes but {args.artifact} has {len(data):,} (a format size.py "
              f"does not know?)", file=sys.stderr)
        return 1
    if args.models:
        rep = floor_report(tensors, parts, rans, shared, len(frames[0]))
        print(f"quantized by: {meta}" if meta else "quantized by: (not recorded)")
        print(floor_tables(rep))
        if args.json:
            import json
            rep = {"artifact": str(args.artifact), "file_bytes": len(data), "meta": meta, "eps": EPS, **rep}
            args.json.write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        return 0
    print(table(rows(tensors, parts, args.by == "kind"), shared, rans["lanes"], len(data), code_bytes, meta))
    if code_bytes is not None and code_bytes + len(data) > SIZE_LIMIT:
        print(f"size.py: code + file = {code_bytes + len(data):,} bytes, over the {SIZE_LIMIT:,}-byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
