"""nGPT (normalized Transformer) for the Parameter Golf challenge, in one file.

torchrun --standalone --nproc_per_node=8 train_gpt.py   # also 1, 2, 4 GPUs, or plain python (CPU works too)
Trains within MAX_WALLCLOCK_SECONDS, exports int-N + zstd to final_model.ptz, reloads it and scores sliding-window BPB.
Every hyperparameter is an environment variable (HPARAMS below); everything is logged to logs/<RUN_ID>.txt.
"""
from __future__ import annotations

import copy
import glob
import io
import math
import os
import sys
import time
import uuid
from types import SimpleNamespace

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
import zstandard
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

try:  # FlashAttention 3, only a build that registers its torch ops: older ones break torch.compile's graph
    from flash_attn_interface import flash_attn_func
    flash_attn_func = flash_attn_func if hasattr(torch.ops.flash_attn_3, "_flash_attn_forward") else None
except ImportError:
    flash_attn_func = None

# ----------------------------------------------------------------------------------------------- hyperparameters

HPARAMS = dict(
    DATA_PATH="./data/datasets/fineweb10B_sp1024", TOKENIZER_PATH="./data/tokenizers/fineweb_1024_bpe.model",
    VOCAB_SIZE=1024, RUN_ID="", SEED=1337,
    ITERATIONS=20000, WARMUP_STEPS=20, WARMDOWN_ITERS=1200, MAX_WALLCLOCK_SECONDS=600.0,
    TRAIN_BATCH_TOKENS=786432, TRAIN_SEQ_LEN=2048, TRAIN_LOG_EVERY=200, VAL_LOSS_EVERY=1000, VAL_BATCH_SIZE=524288,
    NUM_LAYERS=12, MODEL_DIM=512, NUM_HEADS=8, NUM_KV_HEADS=4, MLP_MULT=3, ROPE_DIMS=0, ROPE_BASE=10000.0,
    ALPHA_INIT=0.05, MATRIX_LR=0.04, SCALAR_LR=0.01, EMBED_LR=0.05, MUON_MOMENTUM=0.95, MUON_STEPS=5,
    BETA1=0.9, BETA2=0.95, EVAL_SEQ_LEN=0, EVAL_STRIDE=64, EVAL_BATCH_SEQS=32,
    QUANT_BITS=6, EMBED_BITS=8, ZSTD_LEVEL=3, COMPILE=1,
)
SIZE_LIMIT = 16_000_000


def load_hparams(environ=os.environ) -> SimpleNamespace:
    h = {}
    for name, default in HPARAMS.items():
        raw = environ.get(name)
        try:
            h[name.lower()] = default if raw is None else type(default)(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    h = SimpleNamespace(**h)
    h.run_id = h.run_id or uuid.uuid4().hex[:12]
    h.eval_seq_len = h.eval_seq_len or h.train_seq_len
    h.rope_dims = h.rope_dims or h.model_dim // max(h.num_heads, 1)
    return h


def check_config(h, world: int) -> None:
    """Reject impossible settings before any work, identically on every rank."""
    hd = h.model_dim // max(h.num_heads, 1)
    problems = [
        (8 % world != 0, f"WORLD_SIZE={world} does not divide 8"),
        (h.num_heads < 1 or h.model_dim % h.num_heads, f"MODEL_DIM={h.model_dim} is not divisible by NUM_HEADS={h.num_heads}"),
        (h.num_kv_heads < 1 or h.num_heads % h.num_kv_heads, f"NUM_HEADS={h.num_heads} is not divisible by NUM_KV_HEADS={h.num_kv_heads}"),
        (h.rope_dims % 2 or not 0 < h.rope_dims <= hd, f"ROPE_DIMS={h.rope_dims} must be even and at most the head dim {hd}"),
        (h.train_batch_tokens % (8 * h.train_seq_len), f"TRAIN_BATCH_TOKENS={h.train_batch_tokens} does not split into whole "
         f"sequences of TRAIN_SEQ_LEN={h.train_seq_len} over 8 micro-batches (world size x grad accumulation)"),
        (not 0 < h.eval_stride <= h.eval_seq_len, f"EVAL_STRIDE={h.eval_stride} must be in 1..EVAL_SEQ_LEN={h.eval_seq_len}"),
        (not (4 <= h.quant_bits <= 8 and 4 <= h.embed_bits <= 8), "QUANT_BITS and EMBED_BITS must be in 4..8"),
        (not 0 < h.vocab_size <= 65536, f"VOCAB_SIZE={h.vocab_size} must be in 1..65536 (uint16 tokens)"),
        (min(h.num_layers, h.mlp_mult, h.iterations, h.eval_batch_seqs) < 1, "NUM_LAYERS, MLP_MULT, ITERATIONS, EVAL_BATCH_SEQS must be >= 1"),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(message)

# ----------------------------------------------------------------------------------------------- optimizer


def orthogonalize(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon), in bf16."""
    x = g.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalized updates; each rank orthogonalizes a share of the matrices, one all-reduce joins them."""

    def __init__(self, params, lr: float, momentum: float, steps: int):
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps))

    @torch.no_grad()
    def step(self):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for group in self.param_groups:
            params, mom = group["params"], group["momentum"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                               dtype=torch.bfloat16 if params[0].is_cuda else torch.float32)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank:
                    state = self.state[p]
                    if "buf" not in state:
                        state["buf"] = torch.zeros_like(p)
                    state["buf"].mul_(mom).add_(p.grad)
                    update = orthogonalize(p.grad.add(state["buf"], alpha=mom), group["steps"])
                    flat[offset:offset + p.numel()] = update.flatten() * max(1.0, p.size(0) / p.size(1)) ** 0.5
                offset += p.numel()
            if world > 1:
                dist.all_reduce(flat)
            offset = 0
            for p in params:
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()

def make_optimizers(model, h) -> list[torch.optim.Optimizer]:
    """Muon for the block matrices; Adam for the embedding (EMBED_LR) and every other tensor (SCALAR_LR).
    Each group remembers its base_lr for the schedule."""
    matrices = {id(p) for p in model.matrices()}
    scalars = [p for p in model.parameters() if id(p) not in matrices and p is not model.emb.weight]
    optimizers = [Muon(model.matrices(), h.matrix_lr, h.muon_momentum, h.muon_steps),
                  torch.optim.Adam([dict(params=[model.emb.weight], lr=h.embed_lr), dict(params=scalars, lr=h.scalar_lr)],
                                   betas=(h.beta1, h.beta2), eps=1e-8, fused=model.emb.weight.is_cuda)]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers

# ----------------------------------------------------------------------------------------------- data

SHARD_MAGIC, SHARD_HEADER_BYTES = 20240520, 1024


def shard_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"no shards match {pattern}")
    for f in files:
        shard_length(f)
    return files


def shard_length(path: str) -> int:
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_BYTES // 4)
    if header.size != SHARD_HEADER_BYTES // 4 or header[0] != SHARD_MAGIC or header[1] != 1:
        raise ValueError(f"{path}: bad shard header (want magic {SHARD_MAGIC}, version 1)")
    n, size = int(header[2]), os.path.getsize(path)
    if n <= 0 or size != SHARD_HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: {size} bytes but the header promises {n} tokens ({SHARD_HEADER_BYTES + 2 * n} bytes): truncated or corrupt")
    return n


def load_shard(path: str, vocab_size: int = 65536) -> np.ndarray:
    tokens = np.fromfile(path, dtype="<u2", count=shard_length(path), offset=SHARD_HEADER_BYTES)
    if tokens.max() >= vocab_size:
        raise ValueError(f"{path}: token id {tokens.max()} >= VOCAB_SIZE={vocab_size}: shards and tokenizer do not match")
    return tokens


def load_tokens(pattern: str, vocab_size: int = 65536) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([load_shard(f, vocab_size) for f in shard_files(pattern)]).astype(np.int32))


class TokenStream:
    """Reads the training shards in order, forever; every rank reads the same stream and keeps its own span."""

    def __init__(self, files: list[str], vocab_size: int):
        self.files, self.vocab_size, self.index = files, vocab_size, -1
        self._advance()

    def _advance(self):
        self.index = (self.index + 1) % len(self.files)
        self.tokens, self.pos = load_shard(self.files[self.index], self.vocab_size), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos == len(self.tokens):
                self._advance()
            k = min(n, len(self.tokens) - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(parts)

    def batch(self, seqs: int, seq_len: int, rank: int, world: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        span = seqs * seq_len + 1
        chunk = torch.from_numpy(self.take(span * world)[rank * span:(rank + 1) * span].astype(np.int64)).to(device)
        return chunk[:-1].view(seqs, seq_len), chunk[1:].view(seqs, seq_len)

# ----------------------------------------------------------------------------------------------- metric


def byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int, device) -> tuple[torch.Tensor, ...]:
    """Per token: UTF-8 bytes without the leading space, whether it has one, whether it is a control/unknown/unused token."""
    base, space, boundary = np.zeros(vocab_size, np.int64), np.zeros(vocab_size, bool), np.ones(vocab_size, bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        space[i] = piece.startswith("\u2581")
        base[i] = len(piece.removeprefix("\u2581").encode("utf-8"))
    return tuple(torch.from_numpy(a).to(device) for a in (base, space, boundary))


def evaluate(nll_fn, tokens: torch.Tensor, luts, seq_len: int, stride: int, batch_seqs: int) -> tuple[float, float]:
    """Sliding-window (val_loss, val_bpb): windows of seq_len advance by stride; every target is scored exactly once,
    in the first window that holds it at its end (the first window scores all of its targets). stride == seq_len is
    plain non-overlapping evaluation. Windows are split across ranks; sums are float64."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device, n_targets = luts[0].device, tokens.numel() - 1
    seq_len = min(seq_len, n_targets)
    starts = list(range(0, n_targets - seq_len + 1, stride))
    if starts[-1] + seq_len < n_targets:
        starts.append(n_targets - seq_len)
    starts = torch.tensor(starts, device=device)
    first = torch.zeros_like(starts)
    first[1:] = starts[:-1] + seq_len - starts[1:]
    per_rank = -(-len(starts) // world)
    lo, hi = rank * per_rank, min(len(starts), (rank + 1) * per_rank)
    batch_seqs = min(batch_seqs, per_rank)
    offsets = torch.arange(seq_len + 1, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for b in range(lo, hi, batch_seqs):
        rows = torch.arange(b, b + batch_seqs, device=device)
        idx = rows.clamp_max(hi - 1)
        window = tokens[starts[idx, None] + offsets].long()
        x, y = window[:, :-1], window[:, 1:]
        nll = nll_fn(x, y).double()
        scored = (offsets[None, :-1] >= first[idx, None]) & (rows < hi)[:, None]
        nbytes = luts[0][y] + (luts[1][y] & ~luts[2][x])
        sums += torch.stack([torch.where(scored, nll, 0).sum(), scored.sum().double(), torch.where(scored, nbytes, 0).sum().double()])
    if world > 1:
        dist.all_reduce(sums)
    loss = (sums[0] / sums[1]).item()
    return loss, loss / math.log(2) * (sums[1] / sums[2]).item()

# ----------------------------------------------------------------------------------------------- model


class UnitNorm(torch.autograd.Function):
    """x / ||x|| over the last dim with fp32 math and a hand-written backward. Registered with allow_in_graph: dynamo
    takes it whole, without graph breaks, and the fp32 math runs as written, so ~90 chained normalizations compile
    as accurately as they run eagerly."""

    @staticmethod
    def forward(ctx, x):
        inv = torch.rsqrt(x.float().square().sum(-1, keepdim=True).clamp_min(1e-24))
        ctx.save_for_backward(x, inv)
        return (x.float() * inv).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, inv = ctx.saved_tensors
        y, g = x.float() * inv, grad.float()
        return ((g - y * (g * y).sum(-1, keepdim=True)) * inv).to(grad.dtype)


torch._dynamo.allow_in_graph(UnitNorm)


def unit(x: torch.Tensor) -> torch.Tensor:
    return UnitNorm.apply(x)


def rope_tables(h) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T, 1, ROPE_DIMS / 2) for every position up to the longest sequence."""
    freqs = h.rope_base ** (-torch.arange(0, h.rope_dims, 2).float() / (h.model_dim // h.num_heads))
    angles = torch.outer(torch.arange(max(h.train_seq_len, h.eval_seq_len)).float(), freqs)
    return angles.cos()[:, None, :], angles.sin()[:, None, :]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first 2 * cos.size(-1) dims of each head; x is (B, T, H, D)."""
    r = 2 * cos.size(-1)
    x1, x2, rest = x[..., :r // 2], x[..., r // 2:r], x[..., r:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), -1)


def attention(q, k, v, scale: float) -> torch.Tensor:
    """Causal attention with GQA on (B, T, H, D) tensors: FlashAttention 3 when present, else SDPA."""
    if flash_attn_func is not None and q.is_cuda:
        out = flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
        return out[0] if isinstance(out, tuple) else out
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


class Block(nn.Module):
    """h <- Norm(h + a_A (Norm(Attn(h)) - h)); h <- Norm(h + a_M (Norm(MLP(h)) - h)).
    Every weight matrix is stored with its model-dim axis last and kept with unit rows along it."""

    def __init__(self, h):
        super().__init__()
        d, self.heads, self.kv_heads = h.model_dim, h.num_heads, h.num_kv_heads
        self.head_dim, hidden = d // h.num_heads, h.mlp_mult * d
        self.q = nn.Parameter(torch.randn(d, d))
        self.k = nn.Parameter(torch.randn(self.kv_heads * self.head_dim, d))
        self.v = nn.Parameter(torch.randn(self.kv_heads * self.head_dim, d))
        self.o = nn.Parameter(torch.randn(d, d))
        self.up = nn.Parameter(torch.randn(hidden, d))
        self.down = nn.Parameter(torch.randn(hidden, d))
        # eigen learning rates and q gain: stored at 1/sqrt(d) so Adam moves them like the paper, used through `scale`
        self.scale, self.alpha_init = d ** 0.5, h.alpha_init
        self.alpha_attn = nn.Parameter(torch.full((d,), d ** -0.5))
        self.alpha_mlp = nn.Parameter(torch.full((d,), d ** -0.5))
        self.q_gain = nn.Parameter(torch.full((d,), d ** -0.5))
        self.mlp_gain = nn.Parameter(torch.ones(hidden))

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = F.linear(x, self.q).view(B, T, self.heads, self.head_dim)
        k = F.linear(x, self.k).view(B, T, self.kv_heads, self.head_dim)
        v = F.linear(x, self.v).view(B, T, self.kv_heads, self.head_dim)
        q = unit(rope(q, cos, sin)) * (self.q_gain * self.scale).to(q.dtype).view(self.heads, self.head_dim)
        k = unit(rope(k, cos, sin))
        y = attention(q, k, v, self.head_dim ** 0.5).reshape(B, T, -1) @ self.o
        x = unit(x + self.alpha_attn.abs() * (self.alpha_init * self.scale) * (unit(y) - x))
        y = F.relu(F.linear(x, self.up) * self.mlp_gain.to(x.dtype)).square() @ self.down
        return unit(x + self.alpha_mlp.abs() * (self.alpha_init * self.scale) * (unit(y) - x))


class GPT(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.emb = nn.Embedding(h.vocab_size, h.model_dim)
        nn.init.normal_(self.emb.weight, std=h.model_dim ** -0.5)
        self.blocks = nn.ModuleList(Block(h) for _ in range(h.num_layers))
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.logit_init = h.model_dim ** 0.5
        for name, table in zip(("cos", "sin"), rope_tables(h)):
            self.register_buffer(name, table, persistent=False)
        self.renorm_()

    def matrices(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.parameters() if p.ndim == 2]

    @torch.no_grad()
    def renorm_(self):
        for p in self.matrices():
            p.div_(p.norm(dim=-1, keepdim=True))

    def forward(self, idx, targets, reduction: str = "mean"):
        T = idx.size(1)
        x = unit(self.emb(idx))
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = F.linear(x, self.emb.weight).float() * (self.logit_scale * self.logit_init)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(targets)

# ----------------------------------------------------------------------------------------------- export


def quantize_rows(w: torch.Tensor, bits: int, angular: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int quantization; per row, the clip (fraction of max |w|) with the least error wins:
    angle to the original row when the row is renormalized after dequantization, else squared error."""
    qmax, w = 2 ** (bits - 1) - 1, w.float()
    amax = w.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    best = None
    for clip in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6):
        s = (amax * clip / qmax).half().float()
        q = (w / s).round().clamp(-qmax, qmax)
        r = q * s
        err = -F.cosine_similarity(r, w, dim=-1) if angular else (r - w).square().sum(-1)
        if best is None:
            best = [err, q, s]
        else:
            better = err < best[0]
            best = [torch.where(better, err, best[0]), torch.where(better[:, None], q, best[1]), torch.where(better[:, None], s, best[2])]
    return best[1].to(torch.int8), best[2].half()


MATRIX_KINDS = ("up", "down", "o", "q", "v", "k")  # block matrices, largest first: the order write_artifact lowers bits


def export_state(model: GPT, bits: dict[str, int], embed_bits: int) -> dict:
    """On the CPU: int-bits[kind] rows for the block matrices (renormalized on load), int-`embed_bits` rows for the
    embedding (not renormalized), fp16 for the small tensors."""
    unit_rows = {id(p) for p in model.matrices()}
    out = {"q": {}, "s": {}, "f": {}, "renorm": []}
    for name, p in model.named_parameters():
        if p.ndim < 2:
            out["f"][name] = p.detach().half().cpu()
            continue
        renorm = id(p) in unit_rows
        n_bits = bits[name.rsplit(".", 1)[-1]] if renorm else embed_bits
        out["q"][name], out["s"][name] = (t.cpu() for t in quantize_rows(p.detach(), n_bits, renorm))
        if renorm:
            out["renorm"].append(name)
    return out


def dequantize_state(blob: dict) -> dict[str, torch.Tensor]:
    state = {name: t.float() for name, t in blob["f"].items()}
    for name, q in blob["q"].items():
        w = q.float() * blob["s"][name].float()
        state[name] = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12) if name in blob["renorm"] else w
    return state


def save_artifact(blob: dict, path: str, level: int) -> None:
    buf = io.BytesIO()
    torch.save(blob, buf)
    data = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=-1).compress(buf.getvalue())
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def write_artifact(model: GPT, path: str, h, budget: int) -> dict[str, int]:
    """Export with QUANT_BITS; while the file is over the budget, take one bit off one kind of block matrix at a time
    (in MATRIX_KINDS order, down to 4 bits). Returns the bits used per kind."""
    bits = dict.fromkeys(MATRIX_KINDS, h.quant_bits)
    while True:
        save_artifact(export_state(model, bits, h.embed_bits), path, h.zstd_level)
        kind = max(bits, key=bits.get)
        if os.path.getsize(path) <= budget or bits[kind] == 4:
            return bits
        bits[kind] -= 1


def load_artifact(path: str) -> dict[str, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            raw = zstandard.ZstdDecompressor().decompress(f.read())
        return dequantize_state(torch.load(io.BytesIO(raw), weights_only=True))
    except Exception as e:
        raise ValueError(f"{path} is truncated or corrupt and cannot be loaded ({type(e).__name__}: {e})") from None

# ----------------------------------------------------------------------------------------------- main


def fail(message: str, log=None) -> None:
    (log or (lambda m: None))(f"error: {message}")
    print(f"rank {os.environ.get('RANK', '0')}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    code = open(__file__, encoding="utf-8").read()
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    try:
        h = load_hparams()
        check_config(h, world)
        sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
        if sp.vocab_size() != h.vocab_size:
            raise ValueError(f"VOCAB_SIZE={h.vocab_size} but the tokenizer {h.tokenizer_path} has {sp.vocab_size()} pieces")
        train_files = shard_files(os.path.join(h.data_path, "fineweb_train_*.bin"))
        val_tokens = load_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), h.vocab_size)
    except (ValueError, OSError, RuntimeError) as e:
        fail(str(e))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    accum = 8 // world
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    logfile = None
    if rank == 0:
        os.makedirs("logs", exist_ok=True)
        logfile = open(f"logs/{h.run_id}.txt", "w", encoding="utf-8")
        logfile.write(code + "\n" + "=" * 100 + "\n")

    def log(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)
            logfile.write(msg + "\n")
            logfile.flush()

    log(f"run_id:{h.run_id}")
    log(f"python:{sys.version.split()[0]} torch:{torch.__version__}")
    log(f"hardware:{world}x {torch.cuda.get_device_name(device) if cuda else 'cpu'}")
    log(f"world_size:{world} grad_accum_steps:{accum} flash_attn_3:{flash_attn_func is not None and cuda}")
    for name in HPARAMS:
        log(f"hparam {name}={getattr(h, name.lower())}")
    log(f"code_bytes:{len(code.encode('utf-8'))}")

    torch.manual_seed(h.seed)
    model = GPT(h).to(device)
    log(f"model_params:{sum(p.numel() for p in model.parameters())}")
    compiled = torch.compile(model, dynamic=False, fullgraph=True) if cuda and h.compile else model
    trainer = DDP(compiled, device_ids=[local_rank] if cuda else None) if world > 1 else compiled
    optimizers = make_optimizers(model, h)
    val_tokens = val_tokens.to(device)
    luts = byte_luts(sp, h.vocab_size, device)
    seqs = h.train_batch_tokens // (8 * h.train_seq_len)
    cap_ms = 1000 * h.max_wallclock_seconds

    def nll_fn(x, y):
        with torch.inference_mode(), autocast:
            return compiled(x, y, reduction="none")

    def val(stride, batch_seqs, seq_len=h.eval_seq_len):
        return evaluate(nll_fn, val_tokens, luts, seq_len, stride, batch_seqs)

    def train_step(stream, lr_mul):
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = stream.batch(seqs, h.train_seq_len, rank, world, device)
            if world > 1:
                trainer.require_backward_grad_sync = micro == accum - 1
            with autocast:
                loss = trainer(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach() / accum
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_mul
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.renorm_()
        return loss_sum

    def lr_mul(step, elapsed_ms):
        if h.warmdown_iters <= 0:
            return 1.0
        if cap_ms <= 0:
            return min(1.0, max(h.iterations - step, 0) / h.warmdown_iters)
        return min(1.0, max(cap_ms - elapsed_ms, 0.0) / max(h.warmdown_iters * elapsed_ms / max(step, 1), 1e-9))

    try:
        if h.warmup_steps > 0:  # compile and warm up, then restore the initial weights and optimizer state
            initial = copy.deepcopy(model.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers]
            stream = TokenStream(train_files, h.vocab_size)
            for _ in range(h.warmup_steps):
                train_step(stream, 1.0)
            model.load_state_dict(initial[0])
            for opt, state in zip(optimizers, initial[1]):
                opt.load_state_dict(state)
            log(f"warmup_steps:{h.warmup_steps} done, weights and optimizer state restored")
        stream = TokenStream(train_files, h.vocab_size)
        train_ms, step, stop, val_bpb = 0.0, 0, False, float("nan")
        val_seqs = max(1, h.val_batch_size // (world * h.train_seq_len))
        sync()
        t0 = time.perf_counter()
        while True:
            last = step == h.iterations or stop
            if last or (h.val_loss_every > 0 and step > 0 and step % h.val_loss_every == 0):
                sync()
                train_ms += 1000 * (time.perf_counter() - t0)
                val_loss, val_bpb = val(h.train_seq_len, val_seqs, h.train_seq_len)
                log(f"step:{step}/{h.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                    f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
                sync()
                t0 = time.perf_counter()
            if last:
                break
            loss = train_step(stream, lr_mul(step, train_ms + 1000 * (time.perf_counter() - t0)))
            step += 1
            sync()
            elapsed = train_ms + 1000 * (time.perf_counter() - t0)
            stats = torch.stack([loss, torch.tensor(float(cap_ms > 0 and elapsed + 2 * elapsed / step >= cap_ms), device=device)])
            if world > 1:
                dist.all_reduce(stats)
            train_loss, stop = stats[0].item() / world, stats[1].item() > 0
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"train_loss is {train_loss} at step {step}: training diverged (lower the learning rates)")
            if step <= 10 or step % h.train_log_every == 0 or stop or step == h.iterations:
                log(f"step:{step}/{h.iterations} train_loss:{train_loss:.4f} train_time:{elapsed:.0f}ms step_avg:{elapsed / step:.2f}ms")
            if stop:
                log(f"stopping_early: wallclock_cap train_time:{elapsed:.0f}ms step:{step}/{h.iterations}")
    except (ValueError, FloatingPointError) as e:
        fail(str(e), log)
    t_end = time.perf_counter()
    if cuda:
        log(f"peak_memory allocated:{torch.cuda.max_memory_allocated() // 2**20}MiB reserved:{torch.cuda.max_memory_reserved() // 2**20}MiB")
    else:
        import resource
        log(f"peak_memory maxrss:{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}MiB")
    log(f"pre_quant val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}")

    path, code_bytes = "final_model.ptz", len(code.encode("utf-8"))
    if rank == 0:
        bits = write_artifact(model, path, h, SIZE_LIMIT - code_bytes)
        log("export bits " + " ".join(f"{k}:{b}" for k, b in bits.items()) + f" embed:{h.embed_bits}"
            + (f" (lowered from QUANT_BITS={h.quant_bits} to fit the limit)" if min(bits.values()) < h.quant_bits else ""))
    if world > 1:
        dist.barrier()
    model_bytes = os.path.getsize(path)
    total = code_bytes + model_bytes
    log(f"submission_bytes code:{code_bytes} model:{model_bytes} total:{total} limit:{SIZE_LIMIT}")
    over = total > SIZE_LIMIT
    if over:
        log(f"error: ARTIFACT TOO LARGE: {total} bytes is {total - SIZE_LIMIT} over the {SIZE_LIMIT}-byte limit; this run cannot be submitted")
    with torch.no_grad():  # the score comes from the file alone: poison every weight, then load all of them from it
        for p in model.parameters():
            p.fill_(float("nan"))
    try:
        model.load_state_dict(load_artifact(path), strict=True)
    except (ValueError, RuntimeError) as e:
        fail(str(e), log)
    q_loss, q_bpb = val(h.train_seq_len, val_seqs, h.train_seq_len)
    log(f"final_roundtrip_plain val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f}")
    log(f"quant_gap_bpb:{q_bpb - val_bpb:.4f}")
    sync()
    t0 = time.perf_counter()
    s_loss, s_bpb = val(h.eval_stride, h.eval_batch_seqs)
    sync()
    log(f"final_roundtrip val_loss:{s_loss:.4f} val_bpb:{s_bpb:.4f} eval_time:{1000 * (time.perf_counter() - t0):.0f}ms")
    log(f"final_roundtrip_exact val_loss:{s_loss:.8f} val_bpb:{s_bpb:.8f}")
    log(f"eval_phase_time:{1000 * (time.perf_counter() - t_end):.0f}ms")
    if world > 1:
        del trainer  # DDP's reducer must not drop the last reference to the gloo group: it would do so holding the GIL
        dist.destroy_process_group()
    if over:
        fail(f"artifact is {total} bytes, over the {SIZE_LIMIT}-byte limit", log)


if __name__ == "__main__":
    main()
