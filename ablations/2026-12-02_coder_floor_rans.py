"""A measuring prototype for issue 22 (not the coder to ship): static per-tensor rANS over all int8 tensors of an
artifact, N lanes interleaved in lockstep (numpy), 32-bit states, 16-bit renormalization words, frequencies
normalized to 2^P. Written for artifact v2 (one zstd frame per tensor: train_gpt.py up to commit 807d252); the
script's own coder since (v3) grew from it, and v3 files hold no zstd int8 frames to compare with.
Checks the round trip and reports bytes (words + final states + tables) and encode/decode times.
    python ablations/2026-12-02_coder_floor_rans.py ARTIFACT [P] [LANES]"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_gpt import artifact_frames, unpack_artifact  # noqa: E402

path, P, N = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 14, int(sys.argv[3]) if len(sys.argv) > 3 else 1024
L = 1 << 16
data = open(path, "rb").read()
tensors, _ = unpack_artifact(data)
frames = artifact_frames(data)
ints = [(n, a) for n, role, a in tensors if role in ("unit", "rows")]
zstd = sum(len(f) for (n, role, a), f in zip(tensors, frames[1:]) if role in ("unit", "rows"))


def normalize(counts, P):
    """Frequencies summing to 2^P, >= 1 where counts > 0 (largest remainders, then trimming the largest)."""
    total = 1 << P
    f = np.where(counts > 0, np.maximum(1, np.floor(counts * total / counts.sum())), 0).astype(np.int64)
    while f.sum() < total:
        f[np.argmax(np.where(counts > 0, counts * total / counts.sum() - f, -1))] += 1
    while f.sum() > total:
        i = np.argmax(np.where(f > 1, f, 0))
        f[i] -= 1
    return f


K = 255  # symbols -127..127 as 0..254
tabs_f, tabs_c, table_bytes = [], [], 0
sym = np.concatenate([a.ravel().astype(np.int64) + 127 for _, a in ints])
tid = np.concatenate([np.full(a.size, i) for i, (_, a) in enumerate(ints)])
ideal = 0.0
for _, a in ints:
    counts = np.bincount(a.ravel().astype(np.int64) + 127, minlength=K)
    f = normalize(counts, P)
    tabs_f.append(f)
    tabs_c.append(np.concatenate([[0], np.cumsum(f)[:-1]]))
    m = int(np.abs(a).max())
    table_bytes += 1 + (2 * m + 1) * 2  # max |q|, then 2*M+1 frequencies of 16 bits
    used = counts > 0
    ideal += float((counts[used] * (P - np.log2(f[used]))).sum())
F, C = np.stack(tabs_f), np.stack(tabs_c)
pad = (-len(sym)) % N
sym = np.concatenate([sym, np.full(pad, 127)])
tid = np.concatenate([tid, np.full(pad, len(ints) - 1)])
T = len(sym) // N
S, Tid = sym.reshape(T, N), tid.reshape(T, N)

t0 = time.perf_counter()
x = np.full(N, L, dtype=np.uint64)
groups = []
for t in range(T - 1, -1, -1):
    f, c = F[Tid[t], S[t]].astype(np.uint64), C[Tid[t], S[t]].astype(np.uint64)
    xmax = (np.uint64(1) << np.uint64(32 - P)) * f
    m = x >= xmax
    groups.append((x[m] & np.uint64(0xFFFF)).astype(np.uint16))
    x[m] >>= np.uint64(16)
    x = (x // f << np.uint64(P)) + x % f + c
words = np.concatenate(groups[::-1])
states = x.copy()
t_enc = time.perf_counter() - t0

# decoder tables: slot -> symbol per tensor
lut = np.stack([np.repeat(np.arange(K), f) for f in tabs_f])  # (tensors, 2^P)
t0 = time.perf_counter()
x, ptr, out = states.copy(), 0, np.empty((T, N), np.int64)
mask, p64 = np.uint64((1 << P) - 1), np.uint64(P)
Fu, Cu = F.astype(np.uint64), C.astype(np.uint64)
for t in range(T):
    slot = x & mask
    s = lut[Tid[t], slot]
    out[t] = s
    x = Fu[Tid[t], s] * (x >> p64) + slot - Cu[Tid[t], s]
    m = x < L
    k = int(m.sum())
    x[m] = (x[m] << np.uint64(16)) | words[ptr:ptr + k].astype(np.uint64)
    ptr += k
t_dec = time.perf_counter() - t0
assert ptr == len(words) and (out == S).all(), "round trip failed"
total = 2 * len(words) + 4 * N + table_bytes
n = sum(a.size for _, a in ints)
print(f"{path}: {len(ints)} int8 tensors, {n:,} values, P={P}, lanes={N}: words {2 * len(words):,} + states {4 * N:,} + "
      f"tables {table_bytes:,} = {total:,} bytes ({total * 8 / n:.4f} bits/value); ideal with these frequencies "
      f"{ideal / 8:,.0f}; zstd as stored {zstd:,}: saving {zstd - total:+,} ({(zstd - total) / 16e6:.3%} of 16 MB); "
      f"encode {t_enc:.1f}s, decode {t_dec:.1f}s (numpy, 1 thread), round trip exact")
