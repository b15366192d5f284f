"""Export methods side by side: the same trained weights quantized by each method at equal bytes, and scored.

    python tools/requant.py table --log logs/RUN.txt --model final_model.pt --bytes-per-param 0.44
    python tools/requant.py standin --log logs/RUN.txt --model final_model.pt [--env NUM_LAYERS=11 ...]

table: loads the weights train_gpt.py saved (final_model.pt) into the run's model (shape and data from the hparam
lines of its log), collects GPTQ's Hessians from GPTQ_BATCHES training batches, and for each method writes an artifact
at equal bytes, reloads it and prints bytes, bytes per parameter, val_bpb before and after, and the gap (plain
windows of TRAIN_SEQ_LEN). rtn and gptq search the step to land within 0.5% below --bytes-per-param x parameters.
gptq_lqer (LQER, challenge PR #1797; not among the defaults) is gptq plus a rank --lqer-rank correction of the
quantization error of the --lqer-top matrices where it removes the most Hessian-weighted error energy per byte, its
factors asymmetric int4 in a side frame after the artifact, added before the row normalization on load; the step search
counts the side frame's bytes, so the rest is quantized coarser to pay for it. On the 4 x 128 P1 models it did not
pay at equal bytes: the PR's shape (rank 4, top 3) within noise, more rank or every matrix worse, the embedding alone a
gain that a finer EMBED_STEP_RATIO matches without it (ablations/2026-12-02_lqer.md).
(The per-row clip method this table once compared left train_gpt.py after losing: README, "The artifact".)

standin: builds the model of the current defaults (train_gpt.py's HPARAMS, then --env), fills its matrices with values
drawn from the trained weights (each kind of block matrix from the same kind, standardized by row RMS; the embedding
with its row norms), random Hessians, and runs the real export against the real budget (16,000,000 bytes minus
train_gpt.py's bytes): the log line with its time, total bytes and bytes per parameter. Exit 0 on success, 1 with
one line on failure, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import train_gpt as T  # noqa: E402
from runlog import parse_log  # noqa: E402

METHODS = ("rtn", "gptq", "gptq_lqer")


class Failure(Exception):
    pass


def load_run(log_path: Path, model_path: Path, overrides: dict[str, str]):
    log = parse_log(log_path)
    if not log["hparams"]:
        raise Failure(f"{log_path} has no hparam lines: not a train_gpt.py log")
    h = T.load_hparams({**log["hparams"], **overrides})
    model = T.GPT(h)
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except Exception as e:  # a missing file, a foreign pickle, other shapes
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise Failure(f"{model_path} does not load into the model of {log_path}: {reason}") from None
    return h, model


def hessians_of(model, h) -> dict:
    """GPTQ's Hessians from GPTQ_BATCHES micro-batches from the start of the training shards."""
    stream = T.TokenStream(T.shard_files(os.path.join(h.data_path, "fineweb_train_*.bin")), h.vocab_size)
    seqs = h.train_batch_tokens // (8 * h.train_seq_len)
    batches = (stream.batch(seqs, h.train_seq_len, 0, 1, "cpu") for _ in range(h.gptq_batches))
    return T.collect_hessians(model, batches, contextlib.nullcontext())


# ------------------------------ LQER
# gptq_lqer (LQER, Zhang et al. 2024; challenge PR #1797): after GPTQ, the error E = W/step - q of a matrix (in steps,
# stored orientation) is approximated by a rank-r product whose factors are stored asymmetric int4 (LQER_GROUP values
# per fp16 scale and fp16 minimum), and the loader adds it before the row normalization: a "unit" matrix loads as
# normalize(q + C), the embedding ("rows") as (q + C) x step. Only the top-k matrices by Hessian-weighted error energy
# removed per factor byte get one (k = 0: all of them); the removal is measured after the factors' own quantization,
# in weight units: tr(E H E^T) - tr((E - C) H (E - C)^T) on the matrix's (out, in) orientation with the Hessian GPTQ
# used. The factors are a side frame after the train_gpt.py artifact, LQER_MAGIC + lzma(JSON header, nibbles, fp16
# scales, fp16 minimums), then its 4-byte little-endian length; every byte counts against the budget, and the step
# search is export_by_rate's own (pack_artifact wrapped to append the frame), so the step grows to pay for it.

LQER_MAGIC = b"LQER"
LQER_GROUP = 64


def int4_quantize(x: torch.Tensor, group: int = LQER_GROUP):
    """Asymmetric int4 of each row of x (r, n), `group` values per fp16 scale and fp16 minimum (the last group padded
    with the row's last value): (codes uint8 (r, n) in 0..15, scales fp16 (r, g), minimums fp16 (r, g), dequantized)."""
    r, n = x.shape
    g = -(-n // group)
    xp = torch.cat([x, x[:, -1:].expand(r, g * group - n)], 1).view(r, g, group).float()
    lo, hi = xp.amin(-1), xp.amax(-1)
    scale, lo = ((hi - lo) / 15).half(), lo.half()
    codes = ((xp - lo.float()[..., None]) / scale.float().clamp_min(1e-30)[..., None]).round().clamp(0, 15)
    deq = codes * scale.float()[..., None] + lo.float()[..., None]
    return codes.to(torch.uint8).view(r, -1)[:, :n], scale, lo, deq.view(r, -1)[:, :n]


def int4_dequantize(codes: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, group: int = LQER_GROUP) -> torch.Tensor:
    r, n = codes.shape
    g = scale.size(1)
    cp = torch.cat([codes.float(), torch.zeros(r, g * group - n)], 1).view(r, g, group)
    return (cp * scale.float()[..., None] + lo.float()[..., None]).view(r, -1)[:, :n]


def lqer_dims(name: str, shape) -> tuple[int, int]:
    """(out, in) of a stored matrix: o and down store their input features as rows (INPUT_ROWS)."""
    rows, cols = shape
    return (cols, rows) if name.rpartition(".")[2] in T.INPUT_ROWS else (rows, cols)


def lqer_factor(A: torch.Tensor, H: torch.Tensor, s2: torch.Tensor, rank: int, damp: float):
    """Rank-`rank` factors X (out, r), R (r, in) of A (out, in, in steps), minimizing sum_i s2_i (a_i - x_i R) H (..)^T
    (s2: the squared step of each output; H: the input's Hessian, already scaled by the input steps): the SVD of
    diag(sqrt s2) A L (H + damp = L L^T) gives R, quantized int4; X is refitted to the quantized R by least squares,
    then quantized. Returns ((X codes, scales, mins), (R codes, scales, mins), energy removed) or None."""
    A, H = A.double(), H.double().clone()
    H.diagonal()[H.diagonal() <= 0] = 1.0  # inputs never seen, as gptq()
    Hd = H + damp * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype)
    L, info = torch.linalg.cholesky_ex(Hd)
    if info.item() != 0:
        return None
    _, S, Vh = torch.linalg.svd((s2.double().sqrt()[:, None] * A) @ L, full_matrices=False)
    r = min(rank, len(S))
    B = S[:r, None].sqrt() * Vh[:r]  # R L = B
    R = torch.linalg.solve_triangular(L.T, B.T, upper=True).T
    Rc, Rs, Rm, Rq = int4_quantize(R.float())
    Rq = Rq.double()
    X = torch.linalg.solve(Rq @ Hd @ Rq.T, Rq @ Hd @ A.T).T  # least squares given the quantized R (rows separate)
    Xc, Xs, Xm, Xq = int4_quantize(X.T.float())  # groups along the output axis, one rank component at a time
    D = A - Xq.double().T @ Rq
    removed = ((s2.double()[:, None] * (A @ H)) * A).sum() - ((s2.double()[:, None] * (D @ H)) * D).sum()
    return (Xc, Xs, Xm), (Rc, Rs, Rm), removed.item()


def lqer_side(model, h, tensors: list, meta: dict, hessians: dict, rank: int, top: int, info: dict | None = None) -> bytes:
    """The side frame for an artifact's tensors (the top `top` matrices by energy removed per byte, 0: all)."""
    named, lam = dict(model.named_parameters()), meta["step"]
    steps = {n: torch.from_numpy(a.astype(np.float32)) for n, role, a in tensors if role == "step"}
    cands = []
    for name, role, q in tensors:
        if role not in ("unit", "rows"):
            continue
        w = named[name].detach().float()
        if role == "unit":
            w = F.normalize(w, dim=-1)
            step = T.rms_step(w, lam)
        else:
            step = steps[name]
        E = w / step - torch.from_numpy(q.astype(np.float32))  # in steps, stored orientation
        Hm = hessians[T.hessian_name(name)].double()
        if name.rpartition(".")[2] in T.INPUT_ROWS:  # (out, in) = E^T; the steps scale the input side
            st = step.double().view(-1)
            A, Hm, s2 = E.T, st[:, None] * Hm * st[None, :], torch.ones(E.size(1))
        else:
            A, s2 = E, step.view(-1).square()
        f = lqer_factor(A, Hm, s2, rank, h.gptq_damp)
        if f is None or f[2] <= 0:
            continue
        out, inp = lqer_dims(name, q.shape)
        r = f[1][0].size(0)
        cost = r * (out + inp) / 2 + 4 * r * (-(-out // LQER_GROUP) + -(-inp // LQER_GROUP))
        cands.append((f[2] / cost, name, f))
    cands.sort(key=lambda c: -c[0])
    chosen = cands[:top] if top > 0 else cands
    chosen.sort(key=lambda c: [t[0] for t in tensors].index(c[1]))  # artifact order
    codes, halves = [], []
    for _, name, (X, R, _) in chosen:
        for c, sc, mn in (X, R):
            codes.append(c.flatten())
            halves += [sc.flatten(), mn.flatten()]
    nib = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.uint8)
    nib = torch.cat([nib, torch.zeros(len(nib) % 2, dtype=torch.uint8)]).view(-1, 2)
    packed = (nib[:, 0] | (nib[:, 1] << 4)).numpy().tobytes()
    fp16 = torch.cat(halves).numpy().tobytes() if halves else b""
    header = json.dumps({"rank": rank, "group": LQER_GROUP, "names": [c[1] for c in chosen]}, separators=(",", ":"))
    body = LQER_MAGIC + lzma.compress(header.encode() + b"\n" + packed + fp16, lzma.FORMAT_RAW, filters=T.LZMA_FILTERS)
    if info is not None:
        info.update(names=[c[1] for c in chosen], bytes=len(body) + 4, raw_bytes=len(packed) + len(fp16),
                    removed={c[1]: c[2][2] for c in chosen}, per_byte={c[1]: c[0] for c in chosen})
    return body + len(body).to_bytes(4, "little")


def lqer_unpack(data: bytes) -> tuple[list, dict]:
    """The tensors of a gptq_lqer artifact with each corrected matrix's int8 array replaced by q + C (float32)."""
    n = int.from_bytes(data[-4:], "little")
    base, side = data[:-4 - n], data[-4 - n:-4]
    if not side.startswith(LQER_MAGIC):
        raise ValueError("no LQER side frame at the end")
    tensors, meta = T.unpack_artifact(base)
    raw = lzma.decompress(side[len(LQER_MAGIC):], lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    header, raw = raw.split(b"\n", 1)
    header = json.loads(header)
    rank, group, names = header["rank"], header["group"], header["names"]
    shapes = {n: a.shape for n, role, a in tensors if role in ("unit", "rows")}
    shapes_rn = []  # per factor, (r, n): X stored as X^T (r, out), R (r, in)
    for name in names:
        out, inp = lqer_dims(name, shapes[name])
        r = min(rank, out, inp)
        shapes_rn += [(r, out), (r, inp)]
    total = sum(r * n for r, n in shapes_rn)
    nib = np.frombuffer(raw[:(total + 1) // 2], np.uint8)
    codes = torch.from_numpy(np.stack([nib & 15, nib >> 4], 1).reshape(-1)[:total].copy())
    fp16 = torch.from_numpy(np.frombuffer(raw[(total + 1) // 2:], np.float16).copy())
    factors, at, hat = [], 0, 0
    for r, n in shapes_rn:
        g = -(-n // group)
        c = codes[at:at + r * n].view(r, n)
        sc, mn = fp16[hat:hat + r * g].view(r, g), fp16[hat + r * g:hat + 2 * r * g].view(r, g)
        factors.append(int4_dequantize(c, sc, mn, group))
        at, hat = at + r * n, hat + 2 * r * g
    corr = {}
    for i, name in enumerate(names):
        X, R = factors[2 * i].T, factors[2 * i + 1]  # (out, r), (r, in)
        C = X @ R
        corr[name] = (C.T if name.rpartition(".")[2] in T.INPUT_ROWS else C).numpy()
    return [(n, role, a.astype(np.float32) + corr[n] if n in corr and role in ("unit", "rows") else a)
            for n, role, a in tensors], meta


def lqer_export(model, h, lo: int, hi: int, hessians: dict, rank: int, top: int) -> tuple[bytes, str, dict]:
    """export_by_rate with GPTQ, every try's bytes including the LQER side frame (pack_artifact wrapped)."""
    pack, info = T.pack_artifact, {}

    def with_side(tensors, meta=None):
        return pack(tensors, meta) + lqer_side(model, h, tensors, meta, hessians, rank, top, info)

    T.pack_artifact = with_side
    try:
        data, what, _ = T.export_by_rate(model, h, lo, hi, hessians)
    finally:
        T.pack_artifact = pack
    info.clear()
    tensors, meta = T.unpack_artifact(data[:-4 - int.from_bytes(data[-4:], "little")])
    side = lqer_side(model, h, tensors, meta, hessians, rank, top, info)  # the landed try's factors, for the report
    assert data.endswith(side), "the side frame is not a function of the tensors"
    return data, what, info


def table(args) -> None:
    h, model = load_run(args.log, args.model, dict(kv.split("=", 1) for kv in args.env))
    n = sum(p.numel() for p in model.parameters())
    budget = int(args.bytes_per_param * n)
    val = T.load_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), h.vocab_size)
    if args.val_tokens:
        val = val[:args.val_tokens + 1]
    import sentencepiece as spm
    luts = T.byte_luts(spm.SentencePieceProcessor(model_file=h.tokenizer_path), h.vocab_size, "cpu")

    @torch.no_grad()
    def score(m):
        return T.evaluate(lambda x, y: m(x, y, reduction="none"), val, luts, h.train_seq_len, h.train_seq_len, 32)[1]

    pre = score(model)
    t0 = time.perf_counter()
    hessians = hessians_of(model, h) if {"gptq", "gptq_lqer"} & set(args.methods) else None
    print(f"{n:,} parameters, budget {budget:,} bytes ({args.bytes_per_param} B/param); pre-quantization val_bpb "
          f"{pre:.4f} on {len(val) - 1:,} tokens; Hessians in {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"| method | model bytes | B/param | how | val_bpb before | after | gap |\n|---|---|---|---|---|---|---|")
    arms = [(m, None) for m in sorted(args.methods, key=METHODS.index) if m != "gptq_lqer"]
    if "gptq_lqer" in args.methods:
        arms += [("gptq_lqer", (r, k)) for r in args.lqer_rank for k in args.lqer_top]
    lo = int(budget * (1 - T.BUDGET_WINDOW))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.ptz")
        for method, shape in arms:
            t1, info = time.perf_counter(), {}
            if shape is None:
                h.quant_method, lines = method, []
                size = T.write_artifact(model, path, h, lo, budget, hessians if method == "gptq" else None, lines.append)
                how = next(x for x in lines if x.startswith("export")).split(f"method:{h.quant_method} ", 1)[1].split(" model_bytes")[0]
                state = T.load_artifact(path)
            else:
                data, how, info = lqer_export(model, h, lo, budget, hessians, *shape)
                size = len(data)
                how += (f" lqer_rank:{shape[0]} lqer_top:{shape[1] or 'all'} lqer_bytes:{info['bytes']} "
                        f"lqer:{','.join(info['names']) or '-'}")
                state = T.dequantize(lqer_unpack(data)[0])
            m = T.GPT(h)
            m.load_state_dict(state)
            post = score(m)
            print(f"| {method} | {size:,} | {size / n:.4f} | {how} | {pre:.4f} | {post:.4f} | {post - pre:+.4f} |", flush=True)
            if args.jsonl:
                row = dict(log=str(args.log), model=str(args.model), method=method, env=args.env,
                           bytes_per_param=args.bytes_per_param,
                           budget=budget, window_lo=lo, bytes=size, how=how, val_tokens=len(val) - 1, pre=pre, post=post,
                           gap=post - pre, seconds=round(time.perf_counter() - t1, 1))
                if shape is not None:
                    row.update(lqer_rank=shape[0], lqer_top=shape[1], lqer_bytes=info["bytes"],
                               lqer_raw_bytes=info["raw_bytes"], lqer_names=info["names"], lqer_removed=info["removed"])
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")


def standin(args) -> None:
    _, trained = load_run(args.log, args.model, {})
    h = T.load_hparams(dict(kv.split("=", 1) for kv in args.env))
    torch.manual_seed(args.seed)
    model = T.GPT(h)
    pools = {}
    for name, p in trained.named_parameters():
        if p.ndim == 2:
            kind = "emb" if name == "emb.weight" else name.rsplit(".", 1)[-1]
            w = p.detach().float()
            pools.setdefault(kind, []).append((w / w.square().mean(-1, keepdim=True).sqrt()).flatten())
    emb_norms = trained.emb.weight.detach().float().norm(dim=-1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                kind = "emb" if name == "emb.weight" else name.rsplit(".", 1)[-1]
                pool = torch.cat(pools[kind])
                p.copy_(pool[torch.randint(len(pool), (p.numel(),))].view_as(p))
        model.renorm_()
        w = model.emb.weight
        w.mul_(emb_norms[torch.randint(len(emb_norms), (w.size(0), 1))] / w.norm(dim=-1, keepdim=True))
    hessians = None
    if h.quant_method == "gptq":
        hessians = {}
        for name, p in model.named_parameters():
            if p.ndim == 2:
                d = p.size(0) if name.rsplit(".", 1)[-1] in T.INPUT_ROWS else p.size(1)
                x = torch.randn(2 * d, d)
                hessians[T.hessian_name(name)] = x.T @ x
    code = len(T.code_wrapper((ROOT / "train_gpt.py").read_text(encoding="utf-8")).encode("utf-8"))  # as counted
    n = sum(p.numel() for p in model.parameters())
    print(f"stand-in: {n:,} parameters ({h.num_layers} x {h.model_dim}, MLP {h.mlp_mult}, vocab {h.vocab_size}), "
          f"code {code:,} bytes, torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        size = T.write_artifact(model, os.path.join(tmp, "m.ptz"), h, int(T.SIZE_LIMIT * (1 - T.BUDGET_WINDOW)) - code,
                                T.SIZE_LIMIT - code, hessians, lines.append)
    print(lines[0])
    print(f"total {code + size:,} bytes (window {int(T.SIZE_LIMIT * (1 - T.BUDGET_WINDOW)):,}..{T.SIZE_LIMIT:,}), "
          f"{size / n:.4f} model bytes per parameter")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("table", "standin"):
        s = sub.add_parser(name)
        s.add_argument("--log", type=Path, required=True, help="the train_gpt.py log of the run")
        s.add_argument("--model", type=Path, required=True, help="final_model.pt that run saved")
        s.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="hyperparameter overrides")
    t = sub.choices["table"]
    t.add_argument("--bytes-per-param", type=float, default=0.44, help="budget per parameter (default: %(default)s)")
    t.add_argument("--methods", nargs="+", choices=METHODS, default=["rtn", "gptq"],
                   help="default: %(default)s")
    t.add_argument("--val-tokens", type=int, default=0, help="score on the first N validation tokens (0: all)")
    t.add_argument("--lqer-rank", type=int, nargs="+", default=[4], metavar="R",
                   help="gptq_lqer: rank of each correction (several: one row each; default: %(default)s)")
    t.add_argument("--lqer-top", type=int, nargs="+", default=[3], metavar="K",
                   help="gptq_lqer: how many matrices get one, the best by energy removed per byte (0: all; "
                        "default: %(default)s)")
    t.add_argument("--jsonl", type=Path, help="append one JSON line per row to this file")
    sub.choices["standin"].add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bad = [kv for kv in args.env if "=" not in kv or kv.split("=", 1)[0] not in T.HPARAMS]
    if bad:
        p.error(f"--env takes NAME=VALUE with NAME a hyperparameter of train_gpt.py: {bad}")
    try:
        (table if args.command == "table" else standin)(args)
    except (Failure, ValueError, OSError) as e:
        print(f"requant.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
