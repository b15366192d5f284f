"""Where the bytes of an artifact go: one row per tensor of final_model.ptz.

    python tools/size.py final_model.ptz [--script train_gpt.py] [--by kind]

Columns: parameters, role (unit: int8 rows renormalized on load, no scale; rows: int8 times an fp16 step per row;
step: those steps; raw: fp16), the largest |integer| (int8 roles), the order-0 entropy of the values in bits per
parameter, the tensor's bytes in the file (its zstd frame and the frame's 4-byte length), bytes per parameter, and
the share of the 16,000,000-byte limit. The totals compare the sum of the tensor frames with the file itself (which
adds the magic line and the header). With --script, the code bytes are added to the total as the records count
them (the script's self-extracting wrapper: train_gpt.code_wrapper). Exit 0 when the file loads, 1 with one line when it does not (or the total is over the limit), 2 on bad
arguments.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

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
    print(table(rows(tensors, frames, args.by == "kind"), len(data), code_bytes, meta))
    if code_bytes is not None and code_bytes + len(data) > SIZE_LIMIT:
        print(f"size.py: code + file = {code_bytes + len(data):,} bytes, over the {SIZE_LIMIT:,}-byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
