"""Where the bytes of an artifact go: one row per tensor of final_model.ptz.

    python tools/size.py final_model.ptz [--script train_gpt.py] [--by kind]
    python tools/size.py final_model.ptz --models [--json floor.json]

Columns: parameters, role (unit: int8 rows renormalized on load, no scale; rows: int8 times an fp16 step per row;
step: those steps; raw: fp16), the largest |integer| (int8 roles), the order-0 entropy of the values in bits per
parameter, the tensor's bytes in the file (its zstd frame and the frame's 4-byte length), bytes per parameter, and
the share of the 16,000,000-byte limit. The totals compare the sum of the tensor frames with the file itself (which
adds the magic line and the header). With --script, the code bytes are added to the total as the records count
them (the script's self-extracting wrapper: train_gpt.code_wrapper). Exit 0 when the file loads, 1 with one line when it does not (or the total is over the limit), 2 on bad
arguments.

--models: the entropy-coding floor of the int8 symbols, per kind of tensor (q, k, v, o, up, down, emb; the fp16
"raw" gains and "step" entries separately), in bits per value and bytes, under models a coder could use. Each model
is fitted per tensor; "params" is what its own parameters cost, "total" symbols + params, "saving" is against zstd
as stored (the frames' bytes, without their 4-byte lengths, which any coder keeps). Axes are the stored ones: "col"
is axis 1 (the model dim for every block matrix: the input feature of q, k, v, up and of the tied head; the output
feature of o and down, whose stored rows are their input features), "row" is axis 0.
  zstd     the frame as stored: its bytes x 8 / values
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
raw: zstd against the fp16 bits stored plainly and against the high byte coded at its order-0 entropy (KT) plus the
low byte plain. --json writes every number (per tensor and per kind). About 6 s for a 0.9M-parameter model,
2.5 minutes at the default shape (36.7M), on one CPU thread.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.special import erfc, gammaln

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_gpt import SIZE_LIMIT, artifact_frames, code_wrapper, unpack_artifact  # noqa: E402


def entropy_bits(a: np.ndarray) -> float:
    """Order-0 entropy of the values of a, in bits per value."""
    _, counts = np.unique(a, return_counts=True)
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log2(p)).sum()))


def kind_of(name: str) -> str:
    """blocks.3.up -> up; emb.weight -> emb.weight; blocks.0.alpha_attn -> alpha_attn."""
    return name.split(".", 2)[2] if name.startswith("blocks.") else name


def rows(tensors: list, frames: list[bytes], by_kind: bool) -> list[dict]:
    """One row per tensor (its bytes: its frame in the file and the frame's 4-byte length), or per kind."""
    out = []
    for (name, role, a), frame in zip(tensors, frames[1:]):
        out.append({"name": f"{name} ({role})" if role == "step" else name, "role": role, "params": a.size,
                    "max_int": int(np.abs(a).max()) if role in ("unit", "rows") and a.size else None,
                    "entropy": entropy_bits(a) if a.size > 1 else 0.0, "bytes": 4 + len(frame), "values": a})
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


def floor_report(tensors: list, frames: list[bytes]) -> dict:
    """Per tensor and per kind: values, zstd bytes, and each model's symbol and parameter bits (int8 roles), or the
    fp16 floor (raw, step)."""
    per_tensor, kinds = [], {}
    for (name, role, arr), frame in zip(tensors, frames[1:]):
        kind = kind_of(name).removesuffix(".weight") + (" (step)" if role == "step" else "")
        row = {"name": name, "kind": kind, "role": role, "shape": list(arr.shape), "values": int(arr.size),
               "zstd_bytes": len(frame)}
        if role in ("unit", "rows"):
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
        g = kinds.setdefault(kind, {"role": role, "tensors": 0, "values": 0, "zstd_bytes": 0})
        g["tensors"] += 1
        g["values"] += row["values"]
        g["zstd_bytes"] += row["zstd_bytes"]
        if "models" in row:
            ms = g.setdefault("models", {})
            for mname, v in row["models"].items():
                t = ms.setdefault(mname, {"symbol_bits": 0.0, "param_bits": 0.0})
                t["symbol_bits"] += v["symbol_bits"]
                t["param_bits"] += v["param_bits"]
        else:
            for key in ("fp16_bits", "hi_byte_bits", "hi_byte_param_bits"):
                g[key] = g.get(key, 0.0) + row[key]
    return {"tensors": per_tensor, "kinds": kinds, "header_bytes": len(frames[0])}


def floor_tables(rep: dict) -> str:
    """The --models report as markdown tables."""
    ints = {kd: g for kd, g in rep["kinds"].items() if "models" in g}
    names = MODELS + ("best",)
    total = {"values": sum(g["values"] for g in ints.values()), "zstd_bytes": sum(g["zstd_bytes"] for g in ints.values()),
             "models": {mn: {key: sum(g["models"][mn][key] for g in ints.values()) for key in ("symbol_bits", "param_bits")}
                        for mn in names}}
    rows = list(ints.items()) + [("all int8", total)]

    def tab(title: str, cell, extra=None) -> list[str]:
        cols = ["kind", "values", "zstd"] + list(names)
        lines = [f"{title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for kd, g in rows:
            lines.append(f"| {kd} | {g['values']:,} | {cell(g, None)} | " + " | ".join(cell(g, mn) for mn in names) + " |")
        return lines + [""]

    def bits_sym(g, mn):
        return f"{g['zstd_bytes'] * 8 / g['values']:.3f}" if mn is None else f"{g['models'][mn]['symbol_bits'] / g['values']:.3f}"

    def param_bytes(g, mn):
        return "-" if mn is None else f"{g['models'][mn]['param_bits'] / 8:,.0f}"

    def bits_total(g, mn):
        return bits_sym(g, None) if mn is None else f"{sum(g['models'][mn].values()) / g['values']:.3f}"

    def bytes_total(g, mn):
        return f"{g['zstd_bytes']:,}" if mn is None else f"{sum(g['models'][mn].values()) / 8:,.0f}"

    def saving(g, mn):
        if mn is None:
            return "0"
        sv = g["zstd_bytes"] - sum(g["models"][mn].values()) / 8
        return f"{sv:+,.0f} ({sv / g['zstd_bytes']:+.2%})"

    lines = tab("bits per value, symbols only (before parameter costs)", bits_sym)
    lines += tab("bytes of each model's own parameters", param_bytes)
    lines += tab("bits per value, total (symbols + parameters)", bits_total)
    lines += tab("bytes, total (symbols + parameters)", bytes_total)
    lines += tab("saving against zstd as stored (bytes, and as a fraction of the kind's zstd bytes)", saving)
    best = {}
    for t in rep["tensors"]:
        if "models" in t:
            best[t["models"]["best"]["model"]] = best.get(t["models"]["best"]["model"], 0) + 1
    sv = total["zstd_bytes"] - sum(total["models"]["best"].values()) / 8
    lines += [f"best model per tensor: {', '.join(f'{mn} x{n}' for mn, n in sorted(best.items()))}; all int8 together: "
              f"{sv:+,.0f} bytes against zstd ({sv / SIZE_LIMIT:.3%} of {SIZE_LIMIT:,})", ""]
    other = [(kd, g) for kd, g in rep["kinds"].items() if "models" not in g]
    lines += ["fp16 entries (raw, step): zstd as stored, plain fp16, and the high byte at its order-0 entropy (KT) + "
              "the low byte plain", "",
              "| kind | role | values | zstd bytes | zstd bits/value | fp16 bytes | hi-byte coder bytes | bits/value | saving vs zstd |",
              "|---|---|---|---|---|---|---|---|---|"]
    for kd, g in other:
        hb = (g["hi_byte_bits"] + g["hi_byte_param_bits"]) / 8
        lines.append(f"| {kd} | {g['role']} | {g['values']:,} | {g['zstd_bytes']:,} | {g['zstd_bytes'] * 8 / g['values']:.3f} | "
                     f"{g['fp16_bits'] / 8:,.0f} | {hb:,.0f} | {hb * 8 / g['values']:.3f} | {g['zstd_bytes'] - hb:+,.0f} |")
    z = sum(g["zstd_bytes"] for _, g in other)
    hb = sum((g["hi_byte_bits"] + g["hi_byte_param_bits"]) / 8 for _, g in other)
    lines += [f"| all fp16 | | {sum(g['values'] for _, g in other):,} | {z:,} | | {sum(g['fp16_bits'] for _, g in other) / 8:,.0f} | "
              f"{hb:,.0f} | | {z - hb:+,.0f} |", "",
              f"header frame: {rep['header_bytes']:,} bytes; frame lengths: 4 bytes x {len(rep['tensors']) + 1}"]
    return "\n".join(lines)


def table(rs: list[dict], file_bytes: int, code_bytes: int | None, meta: dict) -> str:
    head = f"{'tensor':<28} {'role':<5} {'params':>10} {'max|q|':>6} {'H bits':>6} {'bytes':>10} {'B/param':>7} {'share':>6}"
    lines = [f"quantized by: {meta}" if meta else "quantized by: (not recorded)", head, "-" * len(head)]
    for r in rs:
        lines.append(f"{r['name']:<28} {r['role']:<5} {r['params']:>10,} {r['max_int'] if r['max_int'] is not None else '-':>6} "
                     f"{r['entropy']:>6.3f} {r['bytes']:>10,} {r['bytes'] / max(r['params'], 1):>7.4f} "
                     f"{r['bytes'] / SIZE_LIMIT:>6.2%}")
    params, alone = sum(r["params"] for r in rs), sum(r["bytes"] for r in rs)
    lines += ["-" * len(head),
              f"{'tensor frames':<34} {params:>10,} {'':>6} {'':>6} {alone:>10,} {alone / params:>7.4f} {alone / SIZE_LIMIT:>6.2%}",
              f"{'the file':<34} {params:>10,} {'':>6} {'':>6} {file_bytes:>10,} {file_bytes / params:>7.4f} {file_bytes / SIZE_LIMIT:>6.2%}"]
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
    except Exception as e:
        print(f"size.py: {args.artifact} is not a loadable artifact ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    if args.models:
        rep = floor_report(tensors, frames)
        print(f"quantized by: {meta}" if meta else "quantized by: (not recorded)")
        print(floor_tables(rep))
        if args.json:
            import json
            rep = {"artifact": str(args.artifact), "file_bytes": len(data), "meta": meta, "eps": EPS, **rep}
            args.json.write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        return 0
    print(table(rows(tensors, frames, args.by == "kind"), len(data), code_bytes, meta))
    if code_bytes is not None and code_bytes + len(data) > SIZE_LIMIT:
        print(f"size.py: code + file = {code_bytes + len(data):,} bytes, over the {SIZE_LIMIT:,}-byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
