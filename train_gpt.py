"""nGPT (normalized Transformer) for the Parameter Golf challenge, in one file.

torchrun --standalone --nproc_per_node=8 train_gpt.py   # also 1, 2, 4 GPUs, or plain python (CPU works too)
Trains within MAX_WALLCLOCK_SECONDS, exports GPTQ int8 + zstd filling 16 MB to final_model.ptz, reloads it and
scores it with score-first test-time training (TTT=0: sliding-window BPB).
Every hyperparameter is an environment variable (HPARAMS below); everything is logged to logs/<RUN_ID>.txt.
"""
from __future__ import annotations

import ast
import base64
import contextlib
import copy
import glob
import json
import lzma
import math
import os
import sys
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Callable, NamedTuple

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
import zstandard
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

try:  # FlashAttention 3, only a build that registers torch ops (older ones break torch.compile's graph): its Python
    # interface's custom op (flash_attn_3::_flash_attn_forward), or only the C++ op it calls (flash_attn_3::fwd)
    from flash_attn_interface import flash_attn_func
    FA3_OPS = [op for op in ("_flash_attn_forward", "fwd") if hasattr(torch.ops.flash_attn_3, op)]
    flash_attn_func = flash_attn_func if FA3_OPS else None
except ImportError:
    flash_attn_func, FA3_OPS = None, []

# ------------------------------ hyperparameters

HPARAMS = dict(  # every one an environment variable of the same name; the README's table says more
    # data and run
    DATA_PATH="./data/datasets/fineweb10B_sp1024",  # folder of fineweb_train_*.bin and fineweb_val_*.bin
    TOKENIZER_PATH="./data/tokenizers/fineweb_1024_bpe.model",  # SentencePiece model of the shards (bytes for BPB)
    VOCAB_SIZE=1024,  # must equal the tokenizer's
    RUN_ID="",  # log name logs/<RUN_ID>.txt (empty: random)
    SEED=1337,  # weight initialization (and TTT's initial adapters)
    # schedule
    ITERATIONS=20000,  # most training steps
    WARMUP_STEPS=20,  # compile warm-up steps, undone before the timed training
    LR_WARMUP_STEPS=20,  # learning rates rise linearly to 1 over the first this-many steps (the first step's spike)
    WARMDOWN_ITERS=4000,  # learning rates fall linearly to MIN_LR over the last this-many steps (from the clock when capped)
    MIN_LR=0.0,  # the warm-down's floor, a fraction of each base learning rate (#1787, #1855: 0.1)
    MAX_WALLCLOCK_SECONDS=600.0,  # training time cap, calibration included (0: none)
    TRAIN_BATCH_TOKENS=786432,  # tokens per optimizer step, all ranks together
    TRAIN_SEQ_LEN=2048,  # training sequence length
    TRAIN_LOG_EVERY=200,  # a step line every this-many steps (and the first 10)
    VAL_LOSS_EVERY=1000,  # non-overlapping validation every this-many steps (0: only at the end)
    VAL_BATCH_SIZE=524288,  # tokens per validation batch, all ranks together
    # model
    NUM_LAYERS=12,  # blocks
    MODEL_DIM=512,  # width
    NUM_HEADS=8,  # query heads
    NUM_KV_HEADS=4,  # key/value heads (GQA)
    MLP_MULT=4.25,  # MLP hidden width = int(MLP_MULT * MODEL_DIM): 36.7M parameters fill 16 MB at the default
    ROPE_DIMS=0,  # rotary dims per head (0: all)
    ROPE_BASE=10000.0,  # rotary base, spread over ROPE_DIMS
    EMBED_INIT_STD=0.005,  # the tied embedding's init std (small: the loss starts at ln(vocab))
    QK_GAIN_INIT=1.0,  # attention logits at init: QK_GAIN_INIT x sqrt(head_dim) x cos(q, k)
    LEAKY_SLOPE=0.5,  # MLP activation leaky_relu(x, LEAKY_SLOPE)^2 (0: relu^2)
    ALPHA_INIT=0.05,  # initial eigen learning rate of each block update
    NORM="exact",  # exact: nGPT's normalizations; approx: anGPT's constant factors, rows kept at norm <= 1
    SMEAR=1,  # SmearGate: a gated share of the previous token's embedding, never across a BOS (#1667, #1855; 0: off)
    ATTN_GATE=0,  # 1: per-head sigmoid gate on the attention output from 12 input dims, transparent at init (#1787)
    # optimizer
    MATRIX_LR=0.04,  # Muon (block matrices)
    SCALAR_LR=0.01,  # Adam (eigen learning rates, gains, logit scale)
    EMBED_LR=0.05,  # Adam (tied embedding)
    SPHERE_OPT="retract",  # retract: rows back to norm 1 after each step; wn: free rows normalized in the forward
    MUON_WD=0.0,  # decoupled Muon weight decay (p *= 1 - lr * wd)
    MUON_MOMENTUM=0.95,  # Muon's Nesterov momentum
    MUON_MOMENTUM_WARMUP_START=0.85,  # its value at step 0
    MUON_MOMENTUM_WARMUP_STEPS=1500,  # steps of linear momentum warm-up (0: none)
    MUON_STEPS=5,  # Newton-Schulz iterations
    BETA1=0.9,  # Adam beta1
    BETA2=0.95,  # Adam beta2
    # evaluation
    EVAL_SEQ_LEN=0,  # scoring window (0: TRAIN_SEQ_LEN)
    EVAL_STRIDE=64,  # sliding-window stride
    EVAL_BATCH_SEQS=32,  # windows per batch per rank in the sliding window
    EVAL_SLIDING=0,  # with TTT, also score the sliding window (comparisons); without TTT it is the score
    EVAL_BUDGET_SECONDS=570.0,  # deadline from reading the artifact: TTT scores what is left forward only (0: none)
    # export
    QUANT_METHOD="gptq",  # gptq, or rtn (round to nearest); the step is searched to fill 16 MB either way
    EMBED_STEP_RATIO=0.5,  # the embedding's step / the block matrices' (each a multiple of the row RMS)
    GPTQ_BATCHES=4,  # training micro-batches per rank for GPTQ's Hessians
    GPTQ_DAMP=0.01,  # GPTQ's damping, a fraction of the mean Hessian diagonal (x10 per retry if indefinite)
    GPTQ_RESERVE_SECONDS=8.0,  # training stops this much early so the calibration fits the training clock
    TARGET_BYTES_PER_PARAM=0.0,  # > 0: fill this many bytes per parameter instead (small models at 16 MB's pressure)
    # test-time training
    TTT=1,  # score-first test-time training: the scored pass (0: the sliding window is)
    TTT_CHUNK=128,  # tokens per chunk: each is scored, then adapted on (at most EVAL_SEQ_LEN)
    TTT_LR=0.001,  # Adam learning rate of the adapters (P1: best with rank 80)
    TTT_RANK=80,  # rank of each adapter (#2135: 80)
    TTT_TARGETS="k,o,up,down,head",  # what adapts: any of q,k,v,o,up,down,head
    TTT_BATCH_DOCS=32,  # documents adapted side by side per rank
    TTT_PLAN=0.8,  # > 0: the finest of TTT_CHUNK, /2, /4, /8 whose pass the warm-up's rates project to end within this
    # share of the evaluation time left when TTT starts (EVAL_BUDGET_SECONDS); 0: TTT_CHUNK as given
    TTT_PHASES=0,  # phased TTT: after each of this many groups of TTT_PHASE_DOCS documents (stream order), SGD on
    TTT_PHASE_DOCS=833,  # the base weights over the group's scored tokens (all ranks averaged), rows renormalized
    TTT_PHASE_LR=0.5,  # (#1855: 3 phases of 833 documents); the SGD learning rate (P1's best)
    TTT_PHASE_STEPS=1,  # SGD steps per phase, each on a share of the group's tokens, the rate falling (cosine) to 0
    TILT_ORDER=16,  # > 0: the TTT score's token n-gram tilt of this order from the scored prefix (#2130, #2135: 16)
    TILT_THRESHOLD=0.8,  # a hint where the n-gram's top next token has had at least this share of its context's
    TILT_BOOST=2.625,  # occurrences; the hinted token's logit gets this boost, renormalized (#2135)
    # numerics
    COMPILE=1,  # torch.compile (with GPU numerics; 0: eager)
    COMPILE_BACKEND="inductor",  # torch.compile's backend (the CPU tests use aot_eager)
    GPU_NUMERICS=0,  # 1 on the CPU: bf16 autocast, torch.compile, bf16 Newton-Schulz, as CUDA always runs
)
SIZE_LIMIT = 16_000_000
FULL_VAL_TOKENS = 63_779_840  # the FineWeb validation split (sp1024), for time projections
BUDGET_WINDOW = 0.005  # the export fills code + model to at least 99.5% of SIZE_LIMIT
GATE_DIMS = 12  # the SmearGate and the attention gate read this many dims of their input (#1667, #1787)
TTT_KINDS = ("q", "k", "v", "o", "up", "down", "head")  # what TTT may adapt: MATRICES' names and the tied head


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
    h.ttt_chunk = min(h.ttt_chunk, h.eval_seq_len)
    h.rope_dims = h.rope_dims or h.model_dim // max(h.num_heads, 1)
    h.bos_id = 1  # the challenge's tokenizers' BOS; read_inputs takes the tokenizer's own
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
        (h.quant_method not in ("gptq", "rtn"), f"QUANT_METHOD={h.quant_method!r} must be gptq or rtn"),
        (h.target_bytes_per_param < 0, f"TARGET_BYTES_PER_PARAM={h.target_bytes_per_param} must be >= 0"),
        (min(h.embed_step_ratio, h.gptq_damp) <= 0 or h.gptq_batches < 1 or h.gptq_reserve_seconds < 0,
         "EMBED_STEP_RATIO and GPTQ_DAMP must be > 0, GPTQ_BATCHES >= 1, GPTQ_RESERVE_SECONDS >= 0"),
        (h.max_wallclock_seconds > 0 and h.quant_method == "gptq" and h.gptq_reserve_seconds >= h.max_wallclock_seconds,
         f"GPTQ_RESERVE_SECONDS={h.gptq_reserve_seconds} leaves no training time in MAX_WALLCLOCK_SECONDS={h.max_wallclock_seconds}"),
        (not 0 < h.vocab_size <= 65536, f"VOCAB_SIZE={h.vocab_size} must be in 1..65536 (uint16 tokens)"),
        (min(h.num_layers, h.iterations, h.eval_batch_seqs) < 1 or h.mlp_mult * h.model_dim < 1,
         "NUM_LAYERS, ITERATIONS, EVAL_BATCH_SEQS must be >= 1, MLP_MULT x MODEL_DIM >= 1"),
        (h.sphere_opt not in ("retract", "wn"), f"SPHERE_OPT={h.sphere_opt!r} must be 'retract' or 'wn'"),
        (h.norm not in ("exact", "approx") or h.norm == "approx" and h.sphere_opt != "retract",
         f"NORM={h.norm!r} must be 'exact' or 'approx' (approx with SPHERE_OPT=retract)"),
        (h.muon_wd < 0, f"MUON_WD={h.muon_wd} must be >= 0"),
        (not 0 <= h.min_lr <= 1, f"MIN_LR={h.min_lr} must be in [0, 1]"),
        (h.lr_warmup_steps < 0, f"LR_WARMUP_STEPS={h.lr_warmup_steps} must be >= 0"),
        (not {h.smear, h.attn_gate} <= {0, 1} or (h.smear or h.attn_gate) and h.model_dim < GATE_DIMS,
         f"SMEAR={h.smear} and ATTN_GATE={h.attn_gate} must each be 0 or 1 (when on: MODEL_DIM >= {GATE_DIMS})"),
        (not 0 <= h.leaky_slope < 1, f"LEAKY_SLOPE={h.leaky_slope} must be in [0, 1)"),
        (h.embed_init_std <= 0 or h.muon_momentum_warmup_steps < 0, "EMBED_INIT_STD must be > 0, MUON_MOMENTUM_WARMUP_STEPS >= 0"),
        (not {h.ttt, h.gpu_numerics, h.eval_sliding} <= {0, 1},
         f"TTT={h.ttt}, GPU_NUMERICS={h.gpu_numerics} and EVAL_SLIDING={h.eval_sliding} must each be 0 or 1"),
        (h.eval_budget_seconds < 0, f"EVAL_BUDGET_SECONDS={h.eval_budget_seconds} must be >= 0 (0: no deadline)"),
        (not 0 <= h.ttt_plan <= 1, f"TTT_PLAN={h.ttt_plan} must be in [0, 1]"),
        (h.ttt and (h.ttt_lr < 0 or min(h.ttt_chunk, h.ttt_rank, h.ttt_batch_docs) < 1),
         "TTT_LR must be >= 0, TTT_CHUNK, TTT_RANK and TTT_BATCH_DOCS >= 1"),
        (h.tilt_order < 0 or h.tilt_order == 1 or not 0 < h.tilt_threshold <= 1 or h.tilt_boost < 0,
         f"TILT_ORDER={h.tilt_order} must be 0 or >= 2, TILT_THRESHOLD in (0, 1], TILT_BOOST >= 0"),
        (h.ttt_phases < 0 or h.ttt_phase_lr < 0 or min(h.ttt_phase_docs, h.ttt_phase_steps) < 1,
         "TTT_PHASES and TTT_PHASE_LR must be >= 0, TTT_PHASE_DOCS and TTT_PHASE_STEPS >= 1"),
        (h.ttt and (not h.ttt_targets or not set(h.ttt_targets.split(",")) <= set(TTT_KINDS)),
         f"TTT_TARGETS={h.ttt_targets!r} must be a comma list of {','.join(TTT_KINDS)}"),
    ]
    found = [message for bad, message in problems if bad]
    if found:  # all at once: a pod run that stops should name every setting to fix
        raise ValueError("; ".join(found))

# ------------------------------ optimizer


def orthogonalize(g: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon), in `dtype`: bf16 on GPUs (and with
    GPU_NUMERICS), fp32 on CPUs (whose bf16 matmuls are emulated and 30x slower)."""
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Nesterov momentum + orthogonalized updates + decoupled weight decay (p *= 1 - lr * wd). Each rank
    orthogonalizes a share of the matrices; one all-reduce joins them."""

    def __init__(self, params, lr: float, momentum: float, steps: int, weight_decay: float, ortho=orthogonalize,
                 dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps, weight_decay=weight_decay))
        self.ortho, self.dtype = ortho, dtype

    @torch.no_grad()
    def step(self):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for group in self.param_groups:
            params, mom = group["params"], group["momentum"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=self.dtype)
            updates = flat.split([p.numel() for p in params])
            for i, p in enumerate(params):
                if i % world == rank:
                    state = self.state[p]
                    if "buf" not in state:
                        state["buf"] = torch.zeros_like(p)
                    state["buf"].mul_(mom).add_(p.grad)
                    update = self.ortho(p.grad.add(state["buf"], alpha=mom), group["steps"], self.dtype)
                    updates[i].copy_(update.flatten() * max(1.0, p.size(0) / p.size(1)) ** 0.5)
            if world > 1:
                dist.all_reduce(flat)
            if group["weight_decay"] > 0:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, [u.view_as(p).to(p.dtype) for u, p in zip(updates, params)], alpha=-group["lr"])


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (to show that none is made inside a timed phase)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def gpu_like(h, device) -> bool:
    """Whether this run uses a GPU's numerics: bf16 autocast, torch.compile, bf16 Newton-Schulz. Always on CUDA; on
    the CPU with GPU_NUMERICS=1 (the tests: the same code paths as on a GPU, except the kernels)."""
    return torch.device(device).type == "cuda" or bool(h.gpu_numerics)


def compiler(h, device):
    """torch.compile with COMPILE_BACKEND when the run compiles (COMPILE=1 and GPU numerics), else the identity."""
    if h.compile and gpu_like(h, device):
        # the model's forward has up to 3 graphs (training, validation, sliding window), each TTT stage up to 3
        # (adapted, forward only, phase step): past dynamo's limit per function a new one would silently run eagerly
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
        return lambda fn, **kw: torch.compile(fn, backend=h.compile_backend, **kw)
    return lambda fn, **kw: fn


def make_optimizers(model, h) -> list[torch.optim.Optimizer]:
    """Muon for the block matrices (MATRIX_LR, MUON_WD); Adam for the embedding (EMBED_LR) and every other tensor
    (SCALAR_LR). Each group remembers its base_lr for the schedule. Newton-Schulz is compiled with GPU numerics."""
    device = model.emb.weight.device
    ortho = compiler(h, device)(orthogonalize, dynamic=False)
    matrices = {id(p) for p in model.matrices()}
    scalars = [p for p in model.parameters() if id(p) not in matrices and p is not model.emb.weight]
    ns_dtype = torch.bfloat16 if gpu_like(h, device) else torch.float32
    optimizers = [Muon(model.matrices(), h.matrix_lr, h.muon_momentum, h.muon_steps, h.muon_wd, ortho, ns_dtype),
                  torch.optim.Adam([dict(params=[model.emb.weight], lr=h.embed_lr), dict(params=scalars, lr=h.scalar_lr)],
                                   betas=(h.beta1, h.beta2), eps=1e-8, fused=device.type == "cuda")]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def set_schedule(optimizers, h, step: int, lr_mul: float) -> None:
    """Every learning rate at lr_mul times its base; Muon's momentum warms up linearly from
    MUON_MOMENTUM_WARMUP_START to MUON_MOMENTUM over MUON_MOMENTUM_WARMUP_STEPS."""
    frac = min(1.0, step / h.muon_momentum_warmup_steps) if h.muon_momentum_warmup_steps > 0 else 1.0
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_mul
            if isinstance(opt, Muon):
                group["momentum"] = h.muon_momentum_warmup_start + frac * (h.muon_momentum - h.muon_momentum_warmup_start)

# ------------------------------ data

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
    """Reads the training shards in order, forever; every rank reads the same stream and keeps its own span. The next
    shard is read (and pinned, for GPUs) by a background thread while this one is consumed, off the critical path."""

    def __init__(self, files: list[str], vocab_size: int, pin: bool = False):
        self.files, self.vocab_size, self.pin, self.index = files, vocab_size, pin, 0
        self.loader = ThreadPoolExecutor(max_workers=1)
        self.next = self.loader.submit(self._read, 0)
        self._advance()

    def _read(self, index: int) -> torch.Tensor:
        tokens = torch.from_numpy(load_shard(self.files[index], self.vocab_size).astype(np.int32))
        return tokens.pin_memory() if self.pin else tokens

    def _advance(self):
        self.tokens, self.pos = self.next.result(), 0
        self.index = (self.index + 1) % len(self.files)
        self.next = self.loader.submit(self._read, self.index)

    def take(self, n: int) -> torch.Tensor:
        parts = []
        while n > 0:
            if self.pos == len(self.tokens):
                self._advance()
            k = min(n, len(self.tokens) - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            self.pos, n = self.pos + k, n - k
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch(self, seqs: int, seq_len: int, rank: int, world: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        span = seqs * seq_len + 1
        chunk = self.take(span * world)[rank * span:(rank + 1) * span].to(device, non_blocking=True).long()
        return chunk[:-1].view(seqs, seq_len), chunk[1:].view(seqs, seq_len)

# ------------------------------ metric


class ByteLuts(NamedTuple):
    """Per token id: UTF-8 bytes of its piece without the leading space; whether it has one; whether it is a
    boundary (control, unknown or unused) token, after which no leading space is counted."""
    base: torch.Tensor
    space: torch.Tensor
    boundary: torch.Tensor


def byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int, device) -> ByteLuts:
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
    return ByteLuts(*(torch.from_numpy(a).to(device) for a in (base, space, boundary)))


def score_sums(nll: torch.Tensor, x: torch.Tensor, y: torch.Tensor, scored: torch.Tensor, luts) -> torch.Tensor:
    """float64 (sum of nll, tokens, bytes) over the scored targets y (inputs x) of a batch: a target's bytes are its
    piece's, plus its leading space unless the previous token is a boundary (control, unknown, unused)."""
    base, space, boundary = luts  # ByteLuts, or any such triple
    nbytes = base[y] + (space[y] & ~boundary[x])
    return torch.stack([torch.where(scored, nll.double(), 0).sum(), scored.sum().double(),
                        torch.where(scored, nbytes, 0).sum().double()])


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
        scored = (offsets[None, :-1] >= first[idx, None]) & (rows < hi)[:, None]
        sums += score_sums(nll_fn(x, y), x, y, scored, luts)
    if world > 1:
        dist.all_reduce(sums)
    loss = (sums[0] / sums[1]).item()
    return loss, loss / math.log(2) * (sums[1] / sums[2]).item()

# ------------------------------ model


class UnitNorm(torch.autograd.Function):
    """x / ||x|| over the last dim, fp32 math, hand-written backward; allow_in_graph: no graph breaks, and ~90 chained
    normalizations compile as accurately as they run eagerly."""

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
    """cos and sin of shape (T, 1, ROPE_DIMS / 2) for every position up to the longest sequence; the frequencies span
    ROPE_BASE over the rotated dims, so partial RoPE keeps long wavelengths too."""
    freqs = h.rope_base ** (-torch.arange(0, h.rope_dims, 2).float() / h.rope_dims)
    angles = torch.outer(torch.arange(max(h.train_seq_len, h.eval_seq_len)).float(), freqs)
    return angles.cos()[:, None, :], angles.sin()[:, None, :]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first 2 * cos.size(-1) dims of each head; x is (B, T, H, D)."""
    r = 2 * cos.size(-1)
    x1, x2, rest = x[..., :r // 2], x[..., r // 2:r], x[..., r:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), -1)


def sdpa_attention(q, k, v, scale: float) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


def flash_attention(q, k, v, scale: float, fa=None) -> torch.Tensor:
    out = (fa or flash_attn_func)(q, k, v, softmax_scale=scale, causal=True)
    return out[0] if isinstance(out, tuple) else out


def attention(q, k, v, scale: float) -> torch.Tensor:
    """Causal attention with GQA on (B, T, H, D) tensors: FlashAttention 3 when present, else SDPA."""
    if flash_attn_func is not None and q.is_cuda:
        return flash_attention(q, k, v, scale)
    return sdpa_attention(q, k, v, scale)


def check_flash_attention(device, compile_fn=None, fa=None, tol: float = 0.02) -> str:
    """Run FlashAttention 3 (or `fa`) against SDPA on a small random causal GQA input in bf16, eagerly and, given
    `compile_fn` (the run's torch.compile), compiled with a full graph, before the model compiles. If either raises or
    disagrees by more than tol, this run uses SDPA (a broken build, or one torch.compile cannot trace, must not cost
    the score)."""
    global flash_attn_func
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(2, 256, h, 64, device=device, generator=g).to(torch.bfloat16) for h in (8, 4, 4))
    want = sdpa_attention(q, k, v, 0.125).float()
    ways = {"eager": lambda: flash_attention(q, k, v, 0.125, fa)}
    if compile_fn is not None:
        compiled = compile_fn(flash_attention, fullgraph=True)
        ways["compiled"] = lambda: compiled(q, k, v, 0.125, fa)
    errors, why = [], ""
    for way, run in ways.items():
        try:
            errors.append((run().float() - want).abs().max().item())
        except Exception as e:  # noqa: BLE001 - any failure of the extension means: do not use it
            errors.append(float("nan"))
            why = f"{way} raised {type(e).__name__}: {str(e)[:200]}"
            break
    what = f"{' and '.join(ways)}, ops {','.join(FA3_OPS) or 'none'}"
    if not all(err <= tol for err in errors):
        flash_attn_func = None
        why = why or f"max abs difference {max(errors):.2g}"
        return f"flash_attn_3: disagrees with SDPA ({what}: {why}, tolerance {tol}): falling back to SDPA"
    return f"flash_attn_3: agrees with SDPA ({what}: max abs difference {max(errors):.2g})"


class Matrix(NamedTuple):
    """One weight matrix of a block, stored (rows, MODEL_DIM) and used with unit rows along the model dim."""
    name: str
    rows: Callable[[int, int, int], int]  # its rows, from (MODEL_DIM, key/value width, MLP hidden width)
    input_rows: bool  # used as y @ W, each stored row belonging to one input feature (else x @ W^T)
    hessian: str  # the input it reads, for GPTQ's Hessian: matrices reading the same input share one
    nu: Callable[[int, int, int], float] | None  # NORM=approx: the constant bringing its output to norm ~1 for unit
    # input and rows, from (MODEL_DIM, head dim, hidden); None: the output is normalized exactly (q, k; up's gain)


# The table every use of the block's matrices derives from: Block's parameters (created in this order, which fixes
# the initialization), the artifact (kinds largest first), GPTQ's Hessians, TTT's targets, anGPT's constants.
# export_by_rate refuses a model with a 2-D parameter this table (or the embedding) does not name.
MATRICES = (
    Matrix("q", lambda d, kv, f: d, False, "qkv", None),
    Matrix("k", lambda d, kv, f: kv, False, "qkv", None),
    Matrix("v", lambda d, kv, f: kv, False, "qkv", lambda d, hd, f: (d / hd) ** 0.5),
    Matrix("o", lambda d, kv, f: d, True, "o", lambda d, hd, f: (hd / d) ** 0.5),
    Matrix("up", lambda d, kv, f: f, False, "up", lambda d, hd, f: (d / f) ** 0.5),
    Matrix("down", lambda d, kv, f: f, True, "down", lambda d, hd, f: 1.0),
)
INPUT_ROWS = tuple(m.name for m in MATRICES if m.input_rows)
HESSIAN_OF = {m.name: m.hessian for m in MATRICES}
FIRST_READER = {m.name: [n.hessian for n in MATRICES].index(m.hessian) == i for i, m in enumerate(MATRICES)}
assert TTT_KINDS == tuple(m.name for m in MATRICES) + ("head",)


def adapted_norm2(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared row norms (batch, rows) of w + b a for w (rows, d), a (batch, r, d), b (batch, rows, r), without forming
    it: |w_i|^2 + 2 b_i.(a w_i) + b_i (a a^T) b_i. In fp32 with autocast off: adapted rows have norm 1 +- 1e-3, which
    bf16 (8 bits) cannot resolve."""
    with torch.autocast(w.device.type, enabled=False):
        w, a, b = w.float(), a.float(), b.float()
        return w.square().sum(-1) + 2 * (b * (w @ a.transpose(1, 2))).sum(-1) + ((b @ (a @ a.transpose(1, 2))) * b).sum(-1)


def note_input(hessians: dict, name: str, x: torch.Tensor) -> None:
    """Add the Gram matrix x^T x of a matrix's input (GPTQ's Hessian) to hessians[name]: fp32, outside autocast
    (under it the product would be bf16, and its sum over batches and ranks loses positive definiteness)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach().reshape(-1, x.size(-1)).float()
        gram = x.T @ x
    if name in hessians:
        hessians[name] += gram
    else:
        hessians[name] = gram


def hessian_name(name: str) -> str:
    """The Hessian a matrix is quantized with, by its input (MATRICES): q, k and v share blocks.i.qkv."""
    block, _, kind = name.rpartition(".")
    return f"{block}.{HESSIAN_OF[kind]}" if kind in HESSIAN_OF else name


@contextlib.contextmanager
def tf32_off():
    """CUDA's TF32 matmuls off meanwhile (the run turns them on for training): their 10-bit products would cost GPTQ's
    Hessians and its solve the accuracy they need."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@torch.no_grad()
def collect_hessians(model: nn.Module, batches, autocast) -> dict[str, torch.Tensor]:
    """Every block matrix input's and the head's Gram matrix (fp32, named by hessian_name), summed over the (x, y)
    batches, with TF32 off."""
    hessians = {}
    model.calibrating(hessians)
    try:
        with tf32_off():
            for x, y in batches:
                with autocast:
                    model(x, y)
    finally:
        model.calibrating(None)
    return hessians


class Block(nn.Module):
    """h <- Norm(h + a_A (Norm(Attn(h)) - h)); h <- Norm(h + a_M (Norm(MLP(h)) - h)).
    Every weight matrix is stored with its model-dim axis last and used with unit rows along it: kept so by a
    retraction after each step (SPHERE_OPT=retract), or stored free and normalized in the forward (SPHERE_OPT=wn)."""

    def __init__(self, h, index: int):
        super().__init__()
        d, self.heads, self.kv_heads = h.model_dim, h.num_heads, h.num_kv_heads
        self.head_dim, hidden = d // h.num_heads, int(h.mlp_mult * d)
        self.name, self.hessians = f"blocks.{index}.", None
        for m in MATRICES:
            self.register_parameter(m.name, nn.Parameter(torch.randn(m.rows(d, self.kv_heads * self.head_dim, hidden), d)))
        # eigen learning rates and q gain: stored at 1/sqrt(d) so Adam moves them like the paper, used through `scale`
        self.scale, self.alpha_init = d ** 0.5, h.alpha_init
        self.alpha_attn = nn.Parameter(torch.full((d,), d ** -0.5))
        self.alpha_mlp = nn.Parameter(torch.full((d,), d ** -0.5))
        self.q_gain = nn.Parameter(torch.full((d,), h.qk_gain_init * d ** -0.5))  # logits QK_GAIN_INIT sqrt(hd) cos
        self.mlp_gain = nn.Parameter(torch.ones(hidden))
        self.leaky_slope, self.wn = h.leaky_slope, h.sphere_opt == "wn"
        # the attention gate's (heads, GATE_DIMS) weights, stored flat: a gain (fp16 in the artifact), not a matrix
        self.attn_gate = nn.Parameter(torch.zeros(self.heads * GATE_DIMS)) if h.attn_gate else None
        # NORM=approx (anGPT): a sublayer output's exact normalization becomes the constant that brings its expected
        # norm to 1 for unit inputs and rows; q and k stay exact
        s, hd = h.leaky_slope, self.head_dim
        self.nu = {m.name: m.nu(d, hd, hidden) for m in MATRICES if m.nu} | {
            "act": (2 * hidden / (3 * (1 + s ** 4))) ** 0.5} if h.norm == "approx" else None

    def mm(self, x: torch.Tensor, name: str, lora: dict | None = None) -> torch.Tensor:
        """x times the named matrix: x W^T, or x W for the INPUT_ROWS ones; with test-time adapters (lora: this
        block's, by kind), each sequence b uses W + B_b A_b (its rows renormalized, except with NORM=approx)."""
        if self.hessians is not None and FIRST_READER[name]:  # calibrating: each input once (q for q, k and v)
            note_input(self.hessians, hessian_name(self.name + name), x)
        w = unit(getattr(self, name)) if self.wn else getattr(self, name)
        if lora is not None and name in lora:
            a, b = lora[name]
            inv = torch.rsqrt(adapted_norm2(w, a, b))[:, None, :] if self.nu is None else 1.0
            if name in INPUT_ROWS:
                x = (x * inv).to(x.dtype)
                return x @ w + (x @ b) @ a
            y = F.linear(x, w) + (x @ a.transpose(1, 2)) @ b.transpose(1, 2)
            return (y * inv).to(y.dtype)  # q, k, v in one dtype for FlashAttention
        return x @ w if name in INPUT_ROWS else F.linear(x, w)

    def scaled(self, y: torch.Tensor, kind: str) -> torch.Tensor:
        return y if self.nu is None else y * self.nu[kind]

    def lerp(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, kind: str) -> torch.Tensor:
        """x + a (y - x), each of y and the result brought back to norm 1: exactly, or with NORM=approx by constants
        (the sublayer's, and 1 / sqrt(a^2 + (1 - a)^2) per dim, the expected norm for independent unit x and y)."""
        a = alpha.abs() * (self.alpha_init * self.scale)
        if self.nu is None:
            return unit(x + a * (unit(y) - x))
        return (x + a * (self.scaled(y, kind) - x)) * torch.rsqrt(a * a + (1 - a) ** 2)

    def mlp_hidden(self, x: torch.Tensor, lora: dict | None = None) -> torch.Tensor:
        """leaky_relu(x W_up * g)^2 (LEAKY_SLOPE 0: relu^2). Under CUDA's autocast the square (pow) is fp32: 8.7 KB per
        token per layer of saved activations at the default shape (tools/bench.py --mode memory)."""
        u = self.scaled(self.mm(x, "up", lora), "up")
        return self.scaled(F.leaky_relu(u * self.mlp_gain.to(u.dtype), self.leaky_slope).square(), "act")

    def forward(self, x, cos, sin, lora: dict | None = None):
        B, T, _ = x.shape
        q = self.mm(x, "q", lora).view(B, T, self.heads, self.head_dim)
        k = self.mm(x, "k", lora).view(B, T, self.kv_heads, self.head_dim)
        v = self.scaled(self.mm(x, "v", lora), "v").view(B, T, self.kv_heads, self.head_dim)
        q = unit(rope(q, cos, sin)) * (self.q_gain * self.scale).to(q.dtype).view(self.heads, self.head_dim)
        k = unit(rope(k, cos, sin))
        y = attention(q, k, v, self.head_dim ** 0.5)
        if self.attn_gate is not None:  # 2 sigmoid(0) = 1 at init; the block input scaled to unit RMS
            z = (x[..., :GATE_DIMS] * self.scale) @ self.attn_gate.view(self.heads, GATE_DIMS).to(x.dtype).T
            y = y * (2 * torch.sigmoid(z))[..., None].to(y.dtype)
        y = self.mm(y.reshape(B, T, -1), "o", lora)
        x = self.lerp(x, y, self.alpha_attn, "o")
        return self.lerp(x, self.mm(self.mlp_hidden(x, lora), "down", lora), self.alpha_mlp, "down")


class GPT(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.emb = nn.Embedding(h.vocab_size, h.model_dim)
        nn.init.normal_(self.emb.weight, std=h.embed_init_std)
        self.blocks = nn.ModuleList(Block(h, i) for i in range(h.num_layers))
        self.hessians, self.approx, self.tilt_boost = None, h.norm == "approx", h.tilt_boost
        self.bos = h.bos_id
        if h.smear:  # zero weight: transparent at init
            self.smear_gate = nn.Parameter(torch.zeros(GATE_DIMS))
            self.smear_weight = nn.Parameter(torch.zeros(()))
        self.smear = bool(h.smear)
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.logit_init = h.model_dim ** 0.5
        for name, table in zip(("cos", "sin"), rope_tables(h)):
            self.register_buffer(name, table, persistent=False)
        self.renorm_()

    def calibrating(self, hessians: dict | None) -> None:
        """Collect every block matrix's and the head's input Gram matrix into `hessians` (None: stop)."""
        for m in (self, *self.blocks):
            m.hessians = hessians

    def matrices(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.parameters() if p.ndim == 2]

    @torch.no_grad()
    def renorm_(self):
        """Every block matrix row back to unit norm (NORM=approx: to norm <= 1): one norm over all rows at once (they
        share the model dim), one foreach divide."""
        mats = self.matrices()
        norms = torch.cat([p.view(-1, p.size(-1)) for p in mats]).norm(dim=-1, keepdim=True)
        norms = norms.clamp_min(1.0) if self.approx else norms
        torch._foreach_div_(mats, list(norms.split([p.size(0) for p in mats])))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The unit input of the first block. SMEAR=1: each token's embedding plus w sigmoid(g . its first GATE_DIMS
        dims, at unit RMS) times the previous token's, except at a BOS (nothing crosses into a new document)."""
        e = self.emb(idx)
        if not self.smear:
            return unit(e)
        cur, prev = e[:, 1:], e[:, :-1] * (idx[:, 1:] != self.bos)[..., None].to(e.dtype)
        z = unit(cur)[..., :GATE_DIMS] @ (self.smear_gate * self.emb.weight.size(1) ** 0.5).to(e.dtype)
        share = (self.smear_weight * torch.sigmoid(z))[..., None].to(e.dtype)
        return unit(torch.cat([e[:, :1], cur + share * prev], 1))

    def head(self, x: torch.Tensor, targets: torch.Tensor, reduction: str, lora: tuple | None,
             hints: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the tied head's logits (with its test-time adapter: its rows are free, no renorm). With n-gram
        hints (a token per position, -1 for none; reduction "none"): the stacked (nll, tilt), where nll + tilt is the
        nll after the hinted token's logit is raised by TILT_BOOST and the distribution renormalized (closed form:
        log(1 + q (e^boost - 1)) - boost [target = hint], q the hinted token's probability)."""
        if self.hessians is not None:
            note_input(self.hessians, "emb.weight", x)
        logits = F.linear(x, self.emb.weight)
        if lora is not None:
            a, b = lora
            logits = logits + (x @ a.transpose(1, 2)) @ b.transpose(1, 2)
        logits = logits.float() * (self.logit_scale * self.logit_init)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        if reduction == "mean":
            return loss
        if hints is None:
            return loss.view_as(targets)
        log_q = logits.gather(-1, hints.clamp_min(0)[..., None]).squeeze(-1) - logits.logsumexp(-1)
        tilt = torch.log1p(log_q.exp() * math.expm1(self.tilt_boost)) - self.tilt_boost * (targets == hints)
        return torch.stack([loss.view_as(targets), torch.where(hints >= 0, tilt, 0)])

    def forward(self, idx, targets, reduction: str = "mean", lora: dict | None = None, stages: tuple | None = None,
                hints: torch.Tensor | None = None):
        """The loss; lora: test-time adapters by parameter name (blocks.i.kind, emb.weight); stages: what runs the
        embedding, each block and the head (StagedForward's compiled functions; default GPT.embed, run_block,
        GPT.head); hints: GPT.head's n-gram tilt."""
        embed, run, head = stages or (GPT.embed, run_block, GPT.head)
        T = idx.size(1)
        x = embed(self, idx)
        for block in self.blocks:
            mine = None if lora is None else {n.removeprefix(block.name): pair for n, pair in lora.items()
                                                if n.startswith(block.name)}
            x = run(block, x, self.cos[:T], self.sin[:T], mine)
        return head(self, x, targets, reduction, None if lora is None else lora.get("emb.weight"), hints)


def run_block(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lora: dict | None) -> torch.Tensor:
    return block(x, cos, sin, lora)


class StagedForward:
    """GPT.forward as TTT compiles it (dynamic shapes): the embedding, one block and the head each a compiled
    function, and every block through the same graph (they differ only in their weights): its compile time does not
    grow with depth (dynamo + AOT on a CPU at 12 x 512: 16 s, against 76 s for the whole model as one graph)."""

    def __init__(self, model: GPT, compile_fn):
        self.model = model
        self.stages = tuple(compile_fn(fn, dynamic=True, fullgraph=True) for fn in (GPT.embed, run_block, GPT.head))

    def __call__(self, idx, targets, reduction: str = "mean", lora: dict | None = None, hints=None) -> torch.Tensor:
        return self.model(idx, targets, reduction, lora, self.stages, hints)

# ------------------------------ test-time training
# Score first, then adapt: each document (cut at BOS) is read chunk after chunk; a chunk's targets are scored with the
# document's current adapters, then one Adam step on that chunk's loss moves them. The base weights never change
# (except phased TTT's steps, after whole groups of scored documents); every document starts from zero adapters, so a
# document's scores depend on nothing after them.
# Bookkeeping on the host, math on the device: document boundaries, batches, windows and the deadline are Python ints
# (the boundaries found once); only the tokens a forward reads, the masks of what it scores and the sums are device
# tensors. (On a GPU a host tensor indexed by a device index raises: tests/devicecheck.py makes the CPU raise too.)

DEADLINE_MARGIN = 1.25  # the deadline takes the time still to come as this much longer than the measured rates say
SEGMENT_BATCHES = 2  # a segment spans the tokens of this many batches of EVAL_SEQ_LEN-long documents per rank


def documents(tokens: torch.Tensor, bos: int) -> tuple[list[int], list[int]]:
    """(starts, lengths), host ints: a document is a BOS and the tokens before the next one; it predicts the tokens
    after its BOS up to and including the next BOS (the last one: up to the end), so the documents hold every target
    exactly once. One device-to-host copy, wherever the tokens are."""
    n_targets = tokens.numel() - 1
    starts = torch.nonzero(tokens[:-1] == bos).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return starts, [b - a for a, b in zip(starts, starts[1:] + [n_targets])]


def ngram_hints(tokens: torch.Tensor, order: int, threshold: float) -> torch.Tensor:
    """The n-gram tilt's hint for every target (-1: none), from the tokens before it only (#2130, #2135): target j's
    context is the order - 1 tokens ending at j; among the earlier targets with the same context, the next token seen
    most often (the first to reach that count) is the hint when it followed at least `threshold` of them. One pass
    over the whole stream in sorts (no Python loop), on the tokens' device: contexts by a 64-bit hash."""
    n, device = tokens.numel() - 1, tokens.device
    hints = torch.full((n,), -1, dtype=torch.long, device=device)
    if n < order:
        return hints
    t = tokens.long()
    weights = torch.randint(1, 2**62, (order - 1,), generator=torch.Generator().manual_seed(order)) * 2 + 1
    key = sum((t[order - 2 - k:n - k] + 1) * int(weights[k]) for k in range(order - 1))  # int64, wrapping
    nxt = t[order - 1:]  # key[i], nxt[i]: the context and the token after it of target j = i + order - 2
    by_ctx = torch.sort(key, stable=True)[1]  # same context together, in stream order
    by_pair = by_ctx[torch.sort(nxt[by_ctx], stable=True)[1]]
    by_pair = by_pair[torch.sort(key[by_pair], stable=True)[1]]  # by context, then next token, then stream order
    pair_count = torch.empty_like(key)
    pair_count[by_pair] = run_rank(key[by_pair], nxt[by_pair]) + 1  # its pair's count, this one included
    k, c = key[by_ctx], pair_count[by_ctx]
    rank = run_rank(k)  # earlier occurrences of the context
    group = torch.cumsum((rank == 0).long(), 0)
    best = torch.cummax(c + group * (n + 1), 0)[0] - group * (n + 1)  # its context's top count so far, included
    rose = torch.where((rank == 0) | (c > torch.cat([best.new_zeros(1), best[:-1]])), torch.arange(n - order + 2,
                       device=device), -1)
    top_at = torch.cummax(rose, 0)[0]  # where the top count last rose (a context's first occurrence always rises)
    prev = torch.cat([top_at.new_zeros(1), top_at[:-1]])
    top_tok, top_count = nxt[by_ctx][prev], torch.cat([best.new_zeros(1), best[:-1]])
    gated = (rank > 0) & (top_count.double() >= threshold * rank.double())
    hints[(by_ctx + order - 2)[gated]] = top_tok[gated]
    return hints


def run_rank(*keys: torch.Tensor) -> torch.Tensor:
    """For each entry of a sequence sorted by these keys, how many entries equal in every key come before it."""
    start = torch.zeros_like(keys[0], dtype=torch.bool)
    start[0] = True
    for k in keys:
        start[1:] |= k[1:] != k[:-1]
    idx = torch.arange(len(keys[0]), device=keys[0].device)
    return idx - torch.cummax(torch.where(start, idx, 0), 0)[0]


def adapted_names(model: nn.Module, kinds: list[str]) -> list[str]:
    names = [f"blocks.{i}.{k}" for i in range(len(model.blocks)) for k in kinds if k != "head"]
    return names + ["emb.weight"] * ("head" in kinds)


def ttt_window(c: int, chunk: int, seq_len: int, lengths: list[int]) -> tuple[int, int, int]:
    """What makes TTT legal, for chunk c of documents of these lengths (longest first): (rows, first, width): the
    window reads positions first .. first + width - 1 of the first `rows` documents, ending at the chunk's end (never
    at the document's end, which a later BOS sets), at most seq_len long; it scores the chunk's own targets, c*chunk ..
    up to the document's end. Every target of a document is scored in exactly one chunk, before the adapters have seen
    it (they move after its chunk). At least 2 rows: a batch of 1 compiles anew."""
    rows = max(sum(n > c * chunk for n in lengths), min(2, len(lengths)))
    width = min((c + 1) * chunk, seq_len)
    return rows, (c + 1) * chunk - width, width


def nll_and_score(fwd, x, y, idx, hints: torch.Tensor | None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's nll at each position (what TTT trains on) and what is scored there: the same, or with the n-gram
    tilt (`hints` of every target, gathered at the windows' positions idx)."""
    if hints is None:
        nll = fwd(x, y, reduction="none", **kw).float()
        return nll, nll
    nll, tilt = fwd(x, y, reduction="none", hints=hints[idx], **kw).float()
    return nll, nll + tilt


def ttt_batch(fwd, tokens, starts: list[int], lengths: list[int], init: dict, luts, h, autocast, per_target=None,
              hints=None):
    """Score one batch of documents (longest first) chunk by chunk, one Adam step on each chunk's loss after scoring it.
    The non-finite guard: from a document's first non-finite score on, its adaptation leaves the loss (its adapters,
    its own, may stay non-finite: no other row reads them) and those positions are re-scored by the base model (the
    forward-only graph) at the end of the batch. One host sync a batch. Returns the (nll, tokens, bytes) sums, the rows
    (in batch order) that lost their adaptation, and the window tokens read."""
    device, C = tokens.device, h.ttt_chunk
    if len(lengths) == 1:  # with an empty document beside it (nothing scored): a batch of one would compile anew
        starts, lengths = starts + [0], lengths + [0]
    starts_d, lengths_d = (torch.tensor(v, device=device) for v in (starts, lengths))
    lora = {n: (a.expand(len(lengths), -1, -1).clone().requires_grad_(True),
                torch.zeros(len(lengths), rows, h.ttt_rank, device=device, requires_grad=True))
            for n, (a, rows) in init.items()}
    opt = torch.optim.Adam([t for pair in lora.values() for t in pair], lr=h.ttt_lr, betas=(0.9, 0.99),
                           fused=device.type == "cuda")
    keep = torch.ones(len(lengths), dtype=torch.bool, device=device)
    sums, work, n_chunks, lost = torch.zeros(3, dtype=torch.float64, device=device), 0, -(-lengths[0] // C), []
    for c in range(n_chunks):
        k, first, width = ttt_window(c, C, h.eval_seq_len, lengths)
        work += k * width
        pos = first + torch.arange(width, device=device)
        scored = (pos < lengths_d[:k, None]) & (pos >= c * C)
        idx = (starts_d[:k, None] + pos).clamp_max(tokens.numel() - 2)
        x, y = tokens[idx].long(), tokens[idx + 1].long()
        with torch.enable_grad(), autocast:
            nll, score = nll_and_score(fwd, x, y, idx, hints, lora=batch_adapters(lora, k))
        nf = (~torch.where(scored, score, 0).isfinite()).cumsum(1) > 0  # from its first non-finite score on
        keep[:k] &= ~nf.any(1)
        good, score = scored & ~nf, score.detach()
        sums += score_sums(score, x, y, good, luts)
        if per_target is not None:
            per_target.index_add_(1, idx[good], torch.stack([score[good], torch.ones_like(score[good])]).double())
        lost.append((idx, scored & nf))
        if c < n_chunks - 1:
            doc_loss = torch.where(good, nll, 0).sum(1) / scored.sum(1).clamp_min(1)
            torch.where(keep[:k], doc_loss, 0).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    dropped = (~keep).nonzero().flatten().tolist()
    if dropped:  # rare: the base model's scores where the adapted ones were not finite
        for idx, mask in lost:
            sums += score_unadapted(fwd, tokens, idx, mask, luts, autocast, per_target, hints)
    return sums, dropped, work


def score_unadapted(fwd, tokens, idx, mask, luts, autocast, per_target=None, hints=None) -> torch.Tensor:
    """The (nll, tokens, bytes) sums of the targets under `mask` of windows `idx` (token positions), scored by the
    base weights in one forward (the forward-only graph); their scores added to per_target."""
    x, y = tokens[idx].long(), tokens[idx + 1].long()
    with torch.no_grad(), autocast:
        score = nll_and_score(fwd, x, y, idx, hints)[1]
    if per_target is not None:
        per_target.index_add_(1, idx[mask], torch.stack([score[mask], torch.ones_like(score[mask])]).double())
    return score_sums(score, x, y, mask, luts)


def forward_rows(starts: list[int], lengths: list[int], chunk: int, seq_len: int) -> list[tuple[int, int, int]]:
    """The windows that score these documents without adaptation exactly as TTT with TTT_LR=0 does (each target with
    its chunk window's context), as few as that allows: (first token, width, first scored position) each. The chunks
    whose windows start at the BOS (the first seq_len // chunk) share one window; each later chunk has its own, seq_len
    tokens ending at the chunk's end (cut at the document's end)."""
    rows, head = [], seq_len // chunk * chunk
    for s, n in zip(starts, lengths):
        rows.append((s, min(n, head), 0))
        for c in range(head // chunk, -(-n // chunk)):
            lo = (c + 1) * chunk - seq_len
            rows.append((s + lo, min((c + 1) * chunk, n) - lo, c * chunk - lo))
    return rows


def forward_batches(rows: list[tuple[int, int, int]], max_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Rows, widest first, in batches of at most max_tokens (rows x the batch's width, or 3 rows); each batch at least
    2 rows and never as many rows as its width (dynamo would give both one symbol and compile anew when they part):
    padded with empty rows (width 0: nothing scored)."""
    batches, rows = [], sorted(rows, key=lambda r: -r[1])
    while rows:
        width = max(2, rows[0][1])
        n = max(1, max_tokens // width)
        n -= n == width > 2 and len(rows) >= n  # one row less rather than one more than max_tokens
        batch, rows = rows[:n], rows[n:]
        while len(batch) < 2 or len(batch) == width:
            batch.append((0, 0, 0))
        batches.append(batch)
    return batches


def row_tokens(rows: list[tuple[int, int, int]]) -> int:
    """The tokens these forward rows read (unpadded): the measure of forward-only work, as the rates count it."""
    return sum(width for _, width, _ in rows)


def score_forward(fwd, tokens, rows, luts, h, autocast, per_target=None, hints=None) -> tuple[torch.Tensor, int]:
    """Score the targets of forward_rows without adaptation, batch after batch of TTT_BATCH_DOCS x EVAL_SEQ_LEN
    tokens: one forward each, no chunk loop, no host sync. Returns the (nll, tokens, bytes) sums and the window tokens
    read."""
    device, work = tokens.device, 0
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in forward_batches(rows, h.ttt_batch_docs * h.eval_seq_len):
        first, width, scored_from = (torch.tensor(v, device=device) for v in zip(*batch))
        pos = torch.arange(max(2, batch[0][1]), device=device)
        idx = (first[:, None] + pos).clamp_max(tokens.numel() - 2)
        scored = (pos >= scored_from[:, None]) & (pos < width[:, None])
        sums += score_unadapted(fwd, tokens, idx, scored, luts, autocast, per_target, hints)
        work += idx.numel()
    return sums, work


class Segment(NamedTuple):
    """A run of consecutive documents, scored (adapted or forward only) as one: the deadline decides before each."""
    docs: list[int]  # document indices, stream order
    first: int  # the token position of its first document's BOS
    phase_after: bool  # a phase group ends with it (TTT_PHASES): a base-weight step follows


def ttt_segments(starts: list[int], lengths: list[int], h, world: int) -> list[Segment]:
    """The pass in stream order: the documents whose BOS falls in the same span of SEGMENT_BATCHES x world x
    TTT_BATCH_DOCS x EVAL_SEQ_LEN tokens, cut where a phase group ends (after document TTT_PHASE_DOCS x p, p = 1 ..
    TTT_PHASES: fixed counts, so a later BOS never moves an earlier boundary). Which segment a document is in, and what
    comes before it, depends on the tokens before its BOS only."""
    span = SEGMENT_BATCHES * world * h.ttt_batch_docs * h.eval_seq_len
    ends = {h.ttt_phase_docs * p for p in range(1, h.ttt_phases + 1)}  # the first document of a new phase group
    segments, docs = [], []
    for d, s in enumerate(starts):
        if docs and (d in ends or s // span != starts[docs[0]] // span):
            segments.append(Segment(docs, starts[docs[0]], d in ends))
            docs = []
        docs.append(d)
    return segments + [Segment(docs, starts[docs[0]], False)] if docs else segments


def rank_batches(docs: list[int], lengths: list[int], h, rank: int, world: int) -> list[list[int]]:
    """This rank's share of a segment's documents in batches: dealt to the ranks in stream order (a document's rank
    depends on the documents before it only, not on later lengths), sorted longest first, cut into TTT_BATCH_DOCS (a
    last batch of one joins the one before: a batch of one would compile another graph)."""
    order = sorted(docs[rank::world], key=lambda d: -lengths[d])
    batches = [order[i:i + h.ttt_batch_docs] for i in range(0, len(order), h.ttt_batch_docs)]
    if len(batches) > 1 and len(batches[-1]) == 1 < h.ttt_batch_docs:
        batches[-2:] = [batches[-2] + batches[-1]]
    return batches


def adapt_base(model: nn.Module, fwd, tokens: torch.Tensor, starts: list[int], lengths: list[int], h, autocast) -> int:
    """Phased TTT's steps: TTT_PHASE_STEPS SGD steps on every block matrix over the targets of these documents, all
    scored already (this rank's share), each on the next share of them, the gradient averaged over every rank's
    tokens (an all-reduce on every rank, with or without documents), the learning rate TTT_PHASE_LR falling as a
    cosine, every row back to norm 1 after each. A non-finite gradient or result undoes that step and ends the phase.
    Returns the steps taken."""
    mats, L, B, steps, device = model.matrices(), h.eval_seq_len, h.ttt_batch_docs, h.ttt_phase_steps, tokens.device
    spans = [torch.arange(s, s + n) for s, n in zip(starts, lengths)]  # host: bookkeeping
    positions = torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)
    per = max(2, -(-len(positions) // (L * steps)))  # rows per step
    per += per % B == 1 < B  # no micro-batch of one row: it would compile anew
    idx = torch.cat([positions, positions.new_zeros(steps * per * L - len(positions))]).view(steps * per, L).to(device)
    mask = (torch.arange(steps * per * L, device=device) < len(positions)).view(steps * per, L)
    for k in range(steps):
        saved = [p.detach().clone() for p in mats]
        flat = phase_gradient(mats, fwd, tokens, idx[k * per:(k + 1) * per], mask[k * per:(k + 1) * per], B, autocast)
        ok = flat.isfinite().all().item() and flat[-1].item() > 0
        if ok:
            with torch.no_grad():
                lr = h.ttt_phase_lr * 0.5 * (1 + math.cos(math.pi * k / steps))
                for p, grad in zip(mats, (flat[:-1] / flat[-1]).split([p.numel() for p in mats])):
                    p.sub_(grad.view_as(p), alpha=lr)
                model.renorm_()
                ok = all(p.isfinite().all().item() for p in mats)
        if not ok:
            restore(mats, saved)
            return k
    return steps


def phase_gradient(mats: list[nn.Parameter], fwd, tokens, idx, mask, micro: int, autocast) -> torch.Tensor:
    """The summed gradient of the nll at `mask` of windows idx (rows of positions) on every matrix, flat, with the
    count of tokens last, summed over the ranks."""
    for p in mats:
        p.requires_grad_(True)
    for b in range(0, len(idx), micro):
        x, y = tokens[idx[b:b + micro]].long(), tokens[idx[b:b + micro] + 1].long()
        with autocast:
            nll = fwd(x, y, reduction="none").float()
        torch.where(mask[b:b + micro], nll, 0).sum().backward()
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in mats]
                     + [mask.sum().view(1).float()])
    for p in mats:
        p.requires_grad_(False)
        p.grad = None
    if dist.is_initialized():
        dist.all_reduce(flat)
    return flat


@torch.no_grad()
def restore(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Each parameter back to its saved copy."""
    for p, q in zip(params, saved):
        p.copy_(q)


def initial_adapters(model: nn.Module, h, device) -> dict:
    """{name: (A, rows)} for every matrix in TTT_TARGETS: one random initial A (TTT_RANK x d) shared by every document
    (seeded by SEED: no score depends on how documents are batched); B starts at zero (rows x TTT_RANK)."""
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(h.seed)
    return {n: ((torch.randn(h.ttt_rank, params[n].size(1), generator=gen) * params[n].size(1) ** -0.5).to(device),
                params[n].size(0)) for n in adapted_names(model, h.ttt_targets.split(","))}


class Rates(NamedTuple):
    """TTT's throughputs on this rank, measured by ttt_warm_up and then on the pass itself: scored tokens per second
    adapting; window tokens per second forward only; forward-only window tokens per scored token (long documents
    read more: a window per chunk past the first EVAL_SEQ_LEN tokens)."""
    adapted: float
    forward: float
    forward_ratio: float


def past_deadline(now: float, deadline: float, adapt_s: float, forward_s: float) -> bool:
    """Whether adapting the next segment (adapt_s) and then scoring every document after it forward only (forward_s),
    each DEADLINE_MARGIN times as long, would end past the deadline."""
    return now + DEADLINE_MARGIN * (adapt_s + forward_s) > deadline


def segment_late(seg: Segment, n_targets: int, now: float, deadline: float, rates: Rates, span: int, world: int) -> bool:
    """This rank's deadline decision before a segment (no collective: ranks never wait on each other's), from what
    lies before the segment only: the targets left from its first BOS on (this rank's share), its nominal span, this
    rank's rates (so far: ttt_pass measures them as it goes)."""
    left = (n_targets - seg.first) / world
    mine = min(left, span / world)
    return past_deadline(now, deadline, mine / rates.adapted, (left - mine) * rates.forward_ratio / rates.forward)


def any_rank(flag: bool, device) -> bool:
    """Whether the flag is set on any rank (one all-reduce, of a device tensor: NCCL takes no other; every rank calls
    it at the same point)."""
    t = torch.tensor(float(flag), device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The model's parameters without gradients meanwhile (TTT trains adapters, not weights), as they were after."""
    grads = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)


def evaluate_ttt(model: nn.Module, tokens: torch.Tensor, luts, h, bos: int, autocast, fwd=None,
                 per_target: torch.Tensor | None = None, deadline: float | None = None, rates: Rates | None = None,
                 clock=time.perf_counter) -> tuple[float, float, dict]:
    """(val_loss, val_bpb, info) with test-time training, segment after segment (ttt_segments): each rank scores its
    share (rank_batches) with ttt_batch, a rank-TTT_RANK adapter per matrix in TTT_TARGETS, fresh for every document.
    With TTT_PHASES, where a phase group ends the base weights take adapt_base's steps over the group's documents
    (all scored by then; later groups lie after them in the stream), and later groups start from them; the base
    weights are restored at the end.
    With a deadline (a `clock` time): from the first segment segment_late finds too late to adapt (from the rates of
    the warm-up, then of this pass), every document left is scored forward only (score_forward: the TTT_LR=0 scores
    in a few batched forwards) and no more phase steps run. Every decision depends on the tokens before the segment
    only, so no score depends on a later token, deadline or not.
    info: docs, tokens, bytes, nonfinite (documents that lost their adaptation), unadapted (by the deadline),
    deadline_at (seconds into this pass when the deadline struck: the first rank), hints and hints_s (the n-gram tilt's
    hints that fire and the seconds their computation took, from this pass's start), phase_steps (taken), window_tokens and
    forward_tokens (this rank's work, adapted and forward only), longest_segment_s (this rank's longest adapted
    segment: how far past the deadline the pass may end). per_target (2, N-1), on the tokens' device, if given, gets
    each target's nll and count (one rank: the tests)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if deadline is not None and rates is None:
        raise ValueError("a deadline needs the measured TTT rates (ttt_warm_up)")
    t0, wall = clock(), time.perf_counter()
    starts, lengths = documents(tokens, bos)
    hints = ngram_hints(tokens, h.tilt_order, h.tilt_threshold) if h.tilt_order else None
    fired = None if hints is None else int((hints >= 0).sum().item())  # (a host sync: the hints' time is measured)
    hints_s = time.perf_counter() - wall
    base = [p.detach().clone() for p in model.matrices()] if h.ttt_phases else []
    with frozen(model):
        out = ttt_pass(model if fwd is None else fwd, model, tokens, hints, starts, lengths, luts, h, autocast,
                       per_target, deadline, rates, clock, t0, rank, world)
        restore(model.matrices(), base)
    sums, info = out
    info["hints"], info["hints_s"] = fired, hints_s
    if world > 1:
        dist.all_reduce(sums)
        info["nonfinite"], info["unadapted"], info["deadline_at"] = all_ranks(
            info["nonfinite"], info["unadapted"], info["deadline_at"], world)
    loss = (sums[0] / sums[1]).item()
    info.update(docs=len(starts), tokens=int(sums[1].item()), bytes=int(sums[2].item()),
                nonfinite=sorted(info["nonfinite"]), unadapted=sorted(info["unadapted"]))
    return loss, loss / math.log(2) * (sums[1] / sums[2]).item(), info


def ttt_pass(fwd, model, tokens, hints, starts, lengths, luts, h, autocast, per_target, deadline, rates, clock, t0,
             rank, world) -> tuple[torch.Tensor, dict]:
    """evaluate_ttt's loop on this rank: its (nll, tokens, bytes) sums and its part of the info."""
    span, n_targets = SEGMENT_BATCHES * world * h.ttt_batch_docs * h.eval_seq_len, tokens.numel() - 1
    init = initial_adapters(model, h, tokens.device)
    sums = torch.zeros(3, dtype=torch.float64, device=tokens.device)
    info = dict(nonfinite=[], unadapted=[], deadline_at=None, phase_steps=0, window_tokens=0, longest_segment_s=0.0)
    group, scored, forward_windows = [], 0, 0  # the phase group's documents; this pass's adapted tokens, their rows
    phases = h.ttt_phases > 0  # until a rank's deadline strikes before a phase ends
    for seg in ttt_segments(starts, lengths, h, world):
        batches = rank_batches(seg.docs, lengths, h, rank, world)
        mine = [d for docs in batches for d in docs]
        now = clock()
        if info["deadline_at"] is None and deadline is not None:
            pace = rates if not scored else Rates(scored / (now - t0), rates.forward, forward_windows / scored)
            if segment_late(seg, n_targets, now, deadline, pace, span, world):
                info["deadline_at"] = now - t0
        if info["deadline_at"] is not None:
            info["unadapted"] += mine
        else:
            for docs in batches:
                s, dropped, work = ttt_batch(fwd, tokens, *spans(docs, starts, lengths), init, luts, h, autocast,
                                             per_target, hints)
                sums += s
                info["nonfinite"] += [docs[r] for r in dropped]
                info["window_tokens"] += work
            scored += sum(lengths[d] for d in mine)
            forward_windows += row_tokens(forward_rows(*spans(mine, starts, lengths), h.ttt_chunk, h.eval_seq_len))
            info["longest_segment_s"] = max(info["longest_segment_s"], clock() - now)
            group += mine
        if seg.phase_after and phases:  # every rank here, together
            phases = not any_rank(info["deadline_at"] is not None, tokens.device)
            if phases:
                info["phase_steps"] += adapt_base(model, fwd, tokens, *spans(group, starts, lengths), h, autocast)
            group = []
    rows = forward_rows(*spans(info["unadapted"], starts, lengths), h.ttt_chunk, h.eval_seq_len)
    s, info["forward_tokens"] = score_forward(fwd, tokens, rows, luts, h, autocast, per_target, hints)
    return sums + s, info


def spans(docs: list[int], starts: list[int], lengths: list[int]) -> tuple[list[int], list[int]]:
    """The starts and the lengths of these documents."""
    return [starts[d] for d in docs], [lengths[d] for d in docs]


def all_ranks(bad: list, unadapted: list, at: float | None, world: int) -> tuple[list, list, float | None]:
    """Every rank's non-finite and unadapted documents, and the earliest time a rank's deadline struck."""
    gathered = [None] * world
    dist.all_gather_object(gathered, (bad, unadapted, at))
    return ([d for part in gathered for d in part[0]], [d for part in gathered for d in part[1]],
            min((part[2] for part in gathered if part[2] is not None), default=None))


def warm_up_documents(h, world: int, vocab_size: int, bos: int, gen: torch.Generator,
                      doc_lengths: list[int] | None = None) -> torch.Tensor:
    """Random tokens (host) cut into documents, enough for two batches per rank: without reading a validation token,
    the shapes TTT meets and its rates on documents like the split's. Their lengths are drawn from doc_lengths (the
    training shard's), else spread from TTT_CHUNK / 2 to EVAL_SEQ_LEN + TTT_CHUNK; one is EVAL_SEQ_LEN + TTT_CHUNK
    long either way (a window past the first EVAL_SEQ_LEN tokens)."""
    n = 2 * world * h.ttt_batch_docs + 2
    if doc_lengths:
        picks = torch.randint(0, len(doc_lengths), (n - 1,), generator=gen).tolist()
        lengths = torch.tensor([max(2, doc_lengths[i]) for i in picks] + [h.eval_seq_len + h.ttt_chunk])
    else:
        lengths = torch.linspace(h.ttt_chunk // 2, h.eval_seq_len + h.ttt_chunk, n).long()
    tokens = torch.randint(0, vocab_size - 1, (int(lengths.sum().item()) + 1,), generator=gen)
    tokens += tokens >= bos  # no BOS but at the starts: a random one would cut a document short (every 1/vocab tokens)
    tokens[torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])] = bos
    return tokens


def batch_width(h, lengths: list[int]) -> int:
    """How many documents a TTT batch will hold, from document lengths like the split's: a rank's share of a segment
    (SEGMENT_BATCHES x TTT_BATCH_DOCS x EVAL_SEQ_LEN tokens) in documents of their mean length, at most TTT_BATCH_DOCS,
    at least one (ttt_batch pads a batch of one). Where documents are long against the window, batches are thin and a
    step scores fewer tokens: the warm-up times batches of this width, not full ones (2x too fast on the tiny runs)."""
    mean = sum(lengths) / max(1, len(lengths))
    return max(1, min(h.ttt_batch_docs, round(SEGMENT_BATCHES * h.ttt_batch_docs * h.eval_seq_len / mean)))


def plan_chunks(h) -> list[int]:
    """The chunks TTT_PLAN chooses among: TTT_CHUNK and its halvings down to an eighth (at least 4 tokens)."""
    if h.ttt_plan <= 0 or h.eval_budget_seconds <= 0:
        return [h.ttt_chunk]
    return [h.ttt_chunk >> k for k in range(4) if h.ttt_chunk >> k >= 4] or [h.ttt_chunk]


def ttt_warm_up(model: nn.Module, fwd, tokens: torch.Tensor, luts, h, bos: int, autocast, sync,
                too_slow=None) -> dict[int, Rates]:
    """Compile TTT's graphs on `tokens` (warm_up_documents: never validation tokens), then measure its rates for each
    of plan_chunks (`sync` before each reading of the clock): two batches of documents adapted, as wide as the pass's
    will be (batch_width), every document forward only. With TTT_PHASES, the base-weight step's graph too (undone).
    too_slow(rates): True when a chunk's pass could not fit the plan even with the whole budget; the finer chunks,
    slower still (more steps per token), are then neither timed nor compiled (the plan cannot take them)."""
    starts, lengths = documents(tokens, bos)
    init = initial_adapters(model, h, tokens.device)
    hints = ngram_hints(tokens, h.tilt_order, h.tilt_threshold) if h.tilt_order else None

    def sample(width):  # two batches as ttt_pass makes them (longest first), the longest document (the last) among them
        return sorted(list(range(min(len(starts) - 1, 2 * width - 1))) + [len(starts) - 1], key=lambda d: -lengths[d])
    width = batch_width(h, lengths)
    timed = sample(width)
    rates = {}
    with frozen(model):
        ttt_batch(fwd, tokens, *spans(sample(h.ttt_batch_docs)[:h.ttt_batch_docs], starts, lengths), init, luts, h,
                  autocast, hints=hints)
        score_forward(fwd, tokens, forward_rows(starts, lengths, h.ttt_chunk, h.eval_seq_len), luts, h, autocast,
                      hints=hints)
        if h.ttt_phases:  # its weight gradients are a graph of their own
            saved = [p.detach().clone() for p in model.matrices()]
            adapt_base(model, fwd, tokens, starts, lengths, h, autocast)
            restore(model.matrices(), saved)
        for chunk in plan_chunks(h):
            hc = SimpleNamespace(**{**vars(h), "ttt_chunk": chunk})
            rows = forward_rows(starts, lengths, chunk, h.eval_seq_len)
            sync()
            t0 = time.perf_counter()
            for b in range(0, len(timed), width):
                ttt_batch(fwd, tokens, *spans(timed[b:b + width], starts, lengths), init, luts, hc, autocast,
                          hints=hints)
            sync()
            t1 = time.perf_counter()
            score_forward(fwd, tokens, rows, luts, hc, autocast, hints=hints)
            sync()
            t2 = time.perf_counter()
            scored = sum(lengths[d] for d in timed)
            rates[chunk] = Rates(scored / (t1 - t0), row_tokens(rows) / (t2 - t1), row_tokens(rows) / sum(lengths))
            if too_slow is not None and too_slow(rates[chunk]):
                break
    return rates


def plan_chunk(rates: dict[int, Rates], n_targets: int, world: int, seconds: float, fill: float) -> tuple[int, dict]:
    """TTT_PLAN's choice: the finest chunk whose pass (n_targets over world ranks at its adapted rate) is projected
    to take at most fill x seconds, else the coarsest; and each chunk's projected seconds."""
    projected = {chunk: n_targets / world / r.adapted for chunk, r in rates.items()}
    fits = [chunk for chunk, p in projected.items() if p <= fill * seconds]
    return (min(fits) if fits else max(projected)), projected


def batch_adapters(lora: dict, k: int) -> dict:
    """Copies of the first k rows of a batch's adapters, only their batch dim dynamic for the compiled forward (a rank
    or row count equal to a window's width would otherwise share its symbol, and the graph would recompile when they
    part: at the default, the k adapter's 256 rows and the first chunk's 256 tokens). Copies, not views (no guard on
    the batch size), and never the adapters themselves: handed to the compiled forward, the leaves Adam updates in
    place gave scores 2e-3 away from eager's (1e-5 with copies)."""
    out = {}
    for name, pair in lora.items():
        out[name] = tuple(t[:k].clone() for t in pair)
        for t in out[name]:
            torch._dynamo.mark_static(t, (1, 2))
    return out

# ------------------------------ export
# final_model.ptz = ARTIFACT_MAGIC, then frames, each after its 4-byte little-endian length: a zstd JSON header
# {"meta": {...}, "tensors": [[name, role, dtype, shape], ...]}; one rANS frame holding every int8 tensor (in header
# order); one zstd frame per other (fp16) tensor (DESIGN.md: why). Roles: "unit" int8 rows renormalized on load,
# "rows" int8 rows times the fp16 steps of the "step" entry after it, "raw" fp16.

ARTIFACT_MAGIC = b"nGPT-artifact-v3\n"
# "dfast" with 7-byte minimum matches: on int8 weights within 0.2% of zstd level 22, 500x faster (DESIGN.md)
ZSTD_PARAMS = dict(window_log=20, hash_log=17, chain_log=16, search_log=1, min_match=7, target_length=0, strategy=2)
MATRIX_KINDS = ("up", "down", "o", "q", "v", "k")  # the artifact's order: one kind after another, largest first
assert sorted(MATRIX_KINDS) == sorted(m.name for m in MATRICES)


def unnamed_matrices(model: nn.Module) -> list[str]:
    """2-D parameters neither MATRICES nor the embedding names: they would be missing from the artifact."""
    return [n for n, p in model.named_parameters()
            if p.ndim == 2 and n != "emb.weight" and n.rpartition(".")[2] not in MATRIX_KINDS]


def inverse_hessian_factor(hessian: torch.Tensor, damp: float, tries: int = 3) -> tuple[torch.Tensor | None, float]:
    """(U, damping used): the upper Cholesky factor of the inverse of H + damp x mean(diag H) I, in fp64. An
    indefinite H (rounding, or too few tokens for the input's dimension) retries with 10x the damping each time;
    (None, last damping) when every try fails."""
    H = hessian.double()
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(H + damp * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype, device=H.device))
        if info.item() == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info.item() == 0 and U.isfinite().all().item():
                return U, damp
        damp *= 10
    return None, damp / 10


def gptq(w: torch.Tensor, step: torch.Tensor, hessian: torch.Tensor, damp: float, block: int = 128) -> tuple[torch.Tensor, str]:
    """GPTQ (Frantar et al. 2022): round w (out, in) to multiples of step (broadcast to w) one input column at a time,
    largest Hessian diagonal first, moving each column's rounding error onto the columns not yet rounded through the
    Cholesky factor of the damped inverse Hessian. Works on the transpose (a column is a contiguous row). Returns int8
    multiples, clamped to +-127, and how: "" (as asked), "damp=X" (more damping was needed), or "rtn" (no damping
    gave a factor: rounded to nearest)."""
    H = hessian.float().clone()
    H.diagonal()[H.diagonal() <= 0] = 1.0  # inputs never seen
    order = torch.argsort(H.diagonal(), descending=True)
    U, used = inverse_hessian_factor(H[order][:, order], damp)
    if U is None:
        return (w.float() / step.float()).round().clamp(-127, 127).to(torch.int8), "rtn"
    W, S, U = w.float()[:, order].T.contiguous(), step.float().expand_as(w)[:, order].T.contiguous(), U.float()
    Q = torch.empty_like(W)
    for a in range(0, W.size(0), block):
        b = min(a + block, W.size(0))
        Wb, E = W[a:b], torch.empty_like(W[a:b])
        for i in range(b - a):
            torch.div(Wb[i], S[a + i], out=Q[a + i]).round_().clamp_(-127, 127)
            torch.addcmul(Wb[i], Q[a + i], S[a + i], value=-1, out=E[i]).div_(U[a + i, a + i])
            Wb[i + 1:].addr_(U[a + i, a + i + 1:b], E[i], alpha=-1)
        W[b:].addmm_(U[a:b, b:].T, E, alpha=-1)
    return Q.T[:, torch.argsort(order)].to(torch.int8), "" if used == damp else f"damp={used:g}"


def rms_step(w: torch.Tensor, lam: float) -> torch.Tensor:
    """lam x each row's RMS, rounded to fp16 (as stored), per row."""
    return (lam * w.square().mean(-1, keepdim=True).sqrt()).half().float().clamp_min(1e-12)


def quantize_matrix(w: torch.Tensor, lam: float, kind: str, hessian: torch.Tensor | None, damp: float):
    """Step = lam x the row's RMS; round to nearest, or GPTQ with the Hessian of the matrix's input. Returns the int8
    rows, the fp16 steps (the values are rounded with the fp16 step, so q * step is exactly what loads) and how GPTQ
    went ("" when it went as asked, or with no Hessian)."""
    w = w.float()
    step = rms_step(w, lam)
    how = ""
    if hessian is None:
        q = (w / step).round().clamp(-127, 127).to(torch.int8)
    elif kind in INPUT_ROWS:
        q, how = gptq(w.T, step.T, hessian, damp)
        q = q.T
    else:
        q, how = gptq(w, step, hessian, damp)
    return q, step.half(), how


def quantized_tensors(model: GPT, h, lam: float, hessians: dict | None, fallbacks: dict | None = None) -> list:
    """[(name, role, array)] in artifact order, grouped by kind of matrix: step lam x row RMS for block matrices,
    EMBED_STEP_RATIO x lam for the embedding; GPTQ given Hessians (named by hessian_name), else round to nearest.
    Matrices whose GPTQ needed more damping or fell back to rounding land in `fallbacks` {name: how}. On the model's
    device, the Hessians moved there if they are elsewhere; TF32 off."""
    named, out = dict(model.named_parameters()), []
    blocks = [(f"blocks.{i}.{kind}", kind) for kind in MATRIX_KINDS for i in range(len(model.blocks))]
    for name, kind in blocks + [("emb.weight", "emb")]:
        w = named[name].detach().float()
        free = kind == "emb" or model.approx  # rows whose norm matters keep their steps
        if not free:
            w = F.normalize(w, dim=-1)  # what the forward uses (SPHERE_OPT=wn stores free rows)
        ratio = h.embed_step_ratio if kind == "emb" else 1.0
        hessian = None if hessians is None else hessians[hessian_name(name)].to(w.device)
        with tf32_off():
            q, step, how = quantize_matrix(w, lam * ratio, kind, hessian, h.gptq_damp)
        if how and fallbacks is not None:
            fallbacks[name] = how
        out.append((name, "rows" if free else "unit", q.cpu().numpy()))
        if free:
            out.append((name, "step", step.cpu().numpy()))
    out += [(name, "raw", p.detach().half().cpu().numpy()) for name, p in named.items() if p.ndim < 2]
    return out


# The int8 symbols are coded at their order-0 entropy per tensor (zstd's match finder sits ~2% above it: DESIGN.md,
# "The coder"): a static rANS coder, one frequency table per tensor, RANS_LANES states interleaved over the symbols of
# all tensors in a row so that numpy codes a step of every lane at once. 32-bit states in [2^16, 2^32), 16-bit words.
RANS_BITS = 14  # each tensor's frequencies sum to 2^RANS_BITS
RANS_LANES = 1024  # at most; a small model gets one lane per 4096 symbols (the final states cost 4 bytes a lane)
U16, U32 = np.uint64(16), np.uint64(32)


def rans_table(q: np.ndarray) -> tuple[int, np.ndarray]:
    """(m, f): m = max |q|, f the frequencies of -m..m summing to 2^RANS_BITS, at least 1 for each value present."""
    m = int(np.abs(q).max()) if q.size else 0
    counts = np.bincount(q.ravel().astype(np.int64) + m, minlength=2 * m + 1)
    total = 1 << RANS_BITS
    f = np.where(counts > 0, np.maximum(1, np.round(counts * total / max(q.size, 1))), 0).astype(np.int64)
    if not q.size:
        f[m] = total
    while f.sum() != total:  # at most a few hundred moves, each on the largest entry that can take it
        i = int(np.argmax(np.where(f > 1, f, 0) if f.sum() > total else counts))
        f[i] += 1 if f.sum() < total else -1
    return m, f


def rans_cdf(tables: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(F, C): each symbol's frequency and cumulative frequency by key 256 i + 127 + q (q of array i), for the tables
    and one padding block after them (the last step's unused lanes: a symbol of probability 1 at key 256 n + 127)."""
    F, C = np.zeros((len(tables) + 1) * 256, np.uint64), np.zeros((len(tables) + 1) * 256, np.uint64)
    for i, (m, f) in enumerate([*tables, (0, np.array([1 << RANS_BITS]))]):
        F[256 * i + 127 - m:256 * i + 128 + m], C[256 * i + 127 - m:256 * i + 128 + m] = f, np.cumsum(f) - f
    return F, C


def rans_encode(arrays: list[np.ndarray]) -> bytes:
    """One frame: crc32 of the rest | lanes, words (uint32) | per array max |q| (uint8) and its 2m+1 frequencies
    (uint16) | final states (uint32 per lane) | words (uint16), in decoding order."""
    n, P = sum(a.size for a in arrays), np.uint64(RANS_BITS)
    lanes = max(1, min(RANS_LANES, n // 4096))
    tables = [rans_table(a) for a in arrays]
    F, C = rans_cdf(tables)
    keys = np.full(-(-n // lanes) * lanes, len(arrays) * 256 + 127, np.int32)
    at = 0
    for i, a in enumerate(arrays):
        keys[at:at + a.size] = a.ravel().astype(np.int32) + 256 * i + 127
        at += a.size
    keys = keys.reshape(-1, lanes)
    x, out = np.full(lanes, 1 << 16, np.uint64), []
    for t in range(keys.shape[0] - 1, -1, -1):
        f, c = F[keys[t]], C[keys[t]]
        big = x >= f << (U32 - P)
        out.append((x[big] & np.uint64(0xFFFF)).astype("<u2"))
        x[big] >>= U16
        x = (x // f << P) + x % f + c
    words = np.concatenate(out[::-1]) if out else np.zeros(0, "<u2")
    body = b"".join([np.array([lanes, words.size], "<u4").tobytes()]
                    + [bytes([m]) + f.astype("<u2").tobytes() for m, f in tables]
                    + [x.astype("<u4").tobytes(), words.tobytes()])
    return zlib.crc32(body).to_bytes(4, "little") + body


def rans_decode(frame: bytes, sizes: list[int]) -> list[np.ndarray]:
    """The int8 arrays (flat) of a rans_encode frame; ValueError on any inconsistency: the checksum, a table, the
    words running out or left over, a final state other than the initial one."""
    if len(frame) < 12 or zlib.crc32(frame[4:]) != int.from_bytes(frame[:4], "little"):
        raise ValueError("the rANS frame's checksum does not match")
    body, P = memoryview(frame)[4:], np.uint64(RANS_BITS)
    lanes, n_words = (int(v) for v in np.frombuffer(body[:8], "<u4"))
    at, n, tables = 8, sum(sizes), []
    for i in range(len(sizes)):
        m = body[at] if at < len(body) else 0
        f = np.frombuffer(body[at + 1:at + 3 + 4 * m], "<u2").astype(np.int64)
        at += 3 + 4 * m
        if f.size != 2 * m + 1 or f.sum() != 1 << RANS_BITS:
            raise ValueError(f"the rANS table of int8 tensor {i} does not sum to 2^{RANS_BITS}")
        tables.append((m, f))
    F, C = rans_cdf(tables)
    tables.append((0, np.array([1 << RANS_BITS])))  # the padding block
    lut = np.concatenate([np.repeat(np.arange(256 * i + 127 - m, 256 * i + 128 + m), f)  # (array, slot) -> key
                          for i, (m, f) in enumerate(tables)])
    if lanes < 1 or len(body) != at + 4 * lanes + 2 * n_words:
        raise ValueError("the rANS frame's length does not fit its lanes and words")
    x = np.frombuffer(body[at:at + 4 * lanes], "<u4").astype(np.uint64)
    words = np.frombuffer(body[at + 4 * lanes:], "<u2").astype(np.uint64)
    array_of = np.full(-(-n // lanes) * lanes, len(sizes), np.int32)
    array_of[:n] = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    array_of = array_of.reshape(-1, lanes) << RANS_BITS
    out, ptr, mask, low = np.empty(array_of.shape, np.uint8), 0, np.uint64((1 << RANS_BITS) - 1), np.uint64(1 << 16)
    for t in range(array_of.shape[0]):
        slot = x & mask
        k = lut[array_of[t] + slot.astype(np.int64)]
        out[t] = k & 255
        x = F[k] * (x >> P) + slot - C[k]
        small = x < low
        need = int(small.sum())
        if ptr + need > n_words:
            raise ValueError("the rANS words run out before the last symbol")
        x[small] = (x[small] << U16) | words[ptr:ptr + need]
        ptr += need
    if ptr != n_words or not (x == low).all():
        raise ValueError("the rANS frame does not decode to its initial states")
    flat = (out.ravel()[:n].astype(np.int16) - 127).astype(np.int8)
    return np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []


def pack_artifact(tensors: list, meta: dict | None = None) -> bytes:
    header = json.dumps({"meta": meta or {}, "tensors": [[n, role, str(a.dtype), list(a.shape)] for n, role, a in tensors]})
    zstd = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(write_checksum=1, **ZSTD_PARAMS))
    frames = [zstd.compress(header.encode()), rans_encode([a for _, _, a in tensors if a.dtype == np.int8])]
    frames += [zstd.compress(np.ascontiguousarray(a).tobytes()) for _, _, a in tensors if a.dtype != np.int8]
    return ARTIFACT_MAGIC + b"".join(len(f).to_bytes(4, "little") + f for f in frames)


def artifact_frames(data: bytes) -> list[bytes]:
    """The compressed frames of an artifact, as stored (header first)."""
    if not data.startswith(ARTIFACT_MAGIC):
        raise ValueError("it does not start with the nGPT artifact header")
    frames, at = [], len(ARTIFACT_MAGIC)
    while at < len(data):
        n = int.from_bytes(data[at:at + 4], "little")
        if at + 4 + n > len(data):
            raise ValueError(f"frame {len(frames)} is cut short")
        frames.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return frames


def unpack_artifact(data: bytes) -> tuple[list, dict]:
    """The inverse of pack_artifact: (tensors, meta); raises on any byte that does not fit the format."""
    frames = artifact_frames(data)
    header = json.loads(zstandard.ZstdDecompressor().decompress(frames[0]))
    entries = header["tensors"]
    ints = [math.prod(shape) for _, _, dtype, shape in entries if dtype == "int8"]
    if len(frames) != 2 + len(entries) - len(ints):
        raise ValueError(f"{len(frames)} frames for {len(entries)} tensors ({len(ints)} of them int8)")
    coded = iter(rans_decode(frames[1], ints))
    fp16 = (zstandard.ZstdDecompressor().decompress(f) for f in frames[2:])
    tensors = []
    for name, role, dtype, shape in entries:
        a = next(coded) if dtype == "int8" else np.frombuffer(next(fp16), dtype)
        tensors.append((name, role, a.reshape(shape)))
    return tensors, header["meta"]


def dequantize(tensors: list) -> dict[str, torch.Tensor]:
    state = {}
    for name, role, a in tensors:
        t = torch.from_numpy(a.copy()).float()
        state[name] = F.normalize(t, dim=-1) if role == "unit" else state[name] * t if role == "step" else t
    return state


def fit_budget(encode, lam: float, slope: float, lo: int, hi: int, lam_min: float, tries: int = 12):
    """Search lam >= lam_min so that len(encode(lam)) lands in [lo, hi]: Newton steps on log bytes against log lam,
    the slope re-estimated from the last two tries, bisecting once bracketed. Returns (lam, data, slope, tries). At
    lam_min (nothing clipped) a model too small for the window stops below it. When no try lands: the largest result
    <= hi (lam doubles until one fits, at most 40 more tries; then the last, too large: main() reports it)."""
    tried, fits, prev, over = 0, None, None, None  # over: the largest lam whose result was > hi
    target = math.log((lo + hi) / 2)
    while True:
        lam = max(lam, lam_min)
        data = encode(lam)
        tried, size = tried + 1, len(data)
        if size <= hi and (fits is None or size > len(fits[1])):
            fits = (lam, data)
        if lo <= size <= hi or (size < lo and lam == lam_min) or tried >= tries + 40:
            return lam, data, slope, tried
        if tried >= tries and fits is not None:
            return fits[0], fits[1], slope, tried
        over = max(over or 0.0, lam) if size > hi else over
        if prev is not None and abs(math.log(lam / prev[0])) > 1e-9:
            est = (math.log(size) - math.log(prev[1])) / math.log(lam / prev[0])
            slope = est if est < -0.05 else slope
        prev = (lam, size)
        new = lam * math.exp(max(-1.0, min(1.0, (target - math.log(size)) / slope))) if tried < tries else 2.0 * lam
        if over is not None and fits is not None and tried < tries and not over < new < fits[0]:
            new = math.sqrt(over * fits[0])
        lam = new


def finest_step(model: GPT, h) -> float:
    """The smallest step multiple at which no weight exceeds 127 steps (the embedding's step is EMBED_STEP_RATIO x)."""
    worst = 0.0
    for name, p in model.named_parameters():
        if p.ndim == 2:
            w = p.detach().float()
            ratio = (w.abs().amax(-1) / w.square().mean(-1).sqrt().clamp_min(1e-12)).max().item()
            worst = max(worst, ratio / (h.embed_step_ratio if name == "emb.weight" else 1.0))
    return worst / 127


def export_by_rate(model: GPT, h, lo: int, hi: int, hessians: dict | None) -> tuple[bytes, str, dict]:
    """The step multiple that fills [lo, hi], searched with round-to-nearest (cheap), then, given Hessians, refined
    with GPTQ (each try a full GPTQ pass). Returns the artifact, how it was made, and GPTQ's fallbacks {name: how}
    (they depend on the Hessians alone, so every GPTQ try has the same)."""
    if unknown := unnamed_matrices(model):
        raise ValueError(f"{unknown[0]}: a 2-D parameter that MATRICES does not name: it would be missing from the "
                         "artifact (add it to the table)")
    fallbacks = {}

    def encode(lam, hessians=None):
        meta = {"method": "gptq" if hessians else "rtn", "step": lam, "embed_step": lam * h.embed_step_ratio}
        fallbacks.clear()
        return pack_artifact(quantized_tensors(model, h, lam, hessians, fallbacks), meta)

    slope = -0.18 * sum(p.numel() for p in model.parameters()) / hi  # bytes ~ n (entropy - log2 lam) / 8
    lam_min = finest_step(model, h)
    lam, data, slope, tried = fit_budget(encode, 0.3, slope, lo, hi, lam_min)
    what = f"rtn_tries:{tried}"
    if hessians is not None:
        lam, data, _, tried = fit_budget(lambda s: encode(s, hessians), lam, slope, lo, hi, lam_min, tries=4)
        what += f" gptq_tries:{tried}"
    what = f"step:{lam:.4f}xRMS embed_step:{lam * h.embed_step_ratio:.4f}xRMS " + what
    if len(data) < lo:
        what += (" (the finest step, below the budget window: the model is too small to fill it)" if lam <= lam_min
                 else " (no try landed in the budget window: the largest that fits)")
    return data, what, dict(fallbacks)


def write_artifact(model: GPT, path: str, h, lo: int, hi: int, hessians: dict | None, log) -> int:
    """Quantize with QUANT_METHOD to between lo and hi bytes (at most hi), write `path` (via a temporary file), log
    how; returns its bytes."""
    t0 = time.perf_counter()
    data, what, fallbacks = export_by_rate(model, h, lo, hi, hessians if h.quant_method == "gptq" else None)
    if fallbacks:  # an indefinite Hessian: logged, never raised (the trained weights must reach the artifact)
        log(f"gptq_fallback:{len(fallbacks)} " + ",".join(f"{n}:{how}" for n, how in fallbacks.items()))
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"export method:{h.quant_method} {what} model_bytes:{len(data)} bytes_per_param:{len(data) / n_params:.4f} "
        f"export_time:{1000 * (time.perf_counter() - t0):.0f}ms")
    return len(data)


def load_artifact(path: str) -> dict[str, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            return dequantize(unpack_artifact(f.read())[0])
    except Exception as e:
        raise ValueError(f"{path} is truncated or corrupt and cannot be loaded ({type(e).__name__}: {e})") from None

# ------------------------------ code bytes
# The records count code as the merged leaders do (#1855, #2135): the size of a self-extracting program that runs the
# script, here its AST without comments and docstrings (ast.unparse: the same program), lzma-compressed, base85 in a
# two-line wrapper. The readable script is what runs and what the record ships; tools/check.py recounts both.

LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def minified(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def code_wrapper(source: str) -> str:
    """A program that runs `source` (as __main__, from its own __file__), counted as the script's code bytes."""
    packed = base64.b85encode(lzma.compress(minified(source).encode(), lzma.FORMAT_RAW, filters=LZMA_FILTERS)).decode()
    return ("import lzma,base64\nexec(lzma.decompress(base64.b85decode('" + packed +
            "'),lzma.FORMAT_RAW,filters=[{'id':lzma.FILTER_LZMA2}]))\n")

# ------------------------------ main


def fail(message: str, log=None) -> None:
    (log or (lambda m: None))(f"error: {message}")
    print(f"rank {os.environ.get('RANK', '0')}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def read_inputs(world: int):
    """Settings, tokenizer, training shards and validation tokens, checked before any work (identically on every
    rank, so every rank stops with the same one-line reason)."""
    try:
        h = load_hparams()
        check_config(h, world)
        sp = spm.SentencePieceProcessor(model_file=h.tokenizer_path)
        if sp.vocab_size() != h.vocab_size:
            raise ValueError(f"VOCAB_SIZE={h.vocab_size} but the tokenizer {h.tokenizer_path} has {sp.vocab_size()} pieces")
        h.bos_id = sp.bos_id()
        train_files = shard_files(os.path.join(h.data_path, "fineweb_train_*.bin"))
        val_tokens = load_tokens(os.path.join(h.data_path, "fineweb_val_*.bin"), h.vocab_size)
    except (ValueError, OSError, RuntimeError) as e:
        fail(str(e))
    return h, sp, train_files, val_tokens


class Run:
    """This rank's share of a run: device, process group, log (rank 0 writes logs/<RUN_ID>.txt), model, optimizers,
    the training step and the evaluation."""

    def __init__(self, h, sp, val_tokens, code: str, rank: int, world: int, local_rank: int):
        self.h, self.code, self.rank, self.world, self.accum = h, code, rank, world, 8 // world
        self.cuda = cuda = torch.cuda.is_available()
        self.device = device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if world > 1:
            dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu_like(h, device))
        self.compile = compiler(h, device)
        self.logfile = None
        if rank == 0:
            os.makedirs("logs", exist_ok=True)
            self.logfile = open(f"logs/{h.run_id}.txt", "w", encoding="utf-8")
        self.log(code + "\n" + "=" * 100, echo=False)
        self.log(f"run_id:{h.run_id}")
        self.log(f"python:{sys.version.split()[0]} torch:{torch.__version__}")
        self.log(f"hardware:{world}x {torch.cuda.get_device_name(device) if cuda else 'cpu'}")
        if cuda and flash_attn_func is not None:
            self.log(check_flash_attention(device, self.compile if h.compile else None))
        self.log(f"world_size:{world} grad_accum_steps:{self.accum} flash_attn_3:{flash_attn_func is not None and cuda}")
        self.log(f"numerics: autocast:{'bf16' if gpu_like(h, device) else 'off'} "
                 f"compile:{h.compile_backend if h.compile and gpu_like(h, device) else 'off'}")
        for name in HPARAMS:
            self.log(f"hparam {name}={getattr(h, name.lower())}")
        self.code_bytes = len(code_wrapper(code).encode("utf-8"))  # counted as the records count it (above)
        self.log(f"code_bytes:{self.code_bytes} code_bytes_plain:{len(code.encode('utf-8'))}")

        torch.manual_seed(h.seed)
        self.model = GPT(h).to(device)
        self.log(f"model_params:{sum(p.numel() for p in self.model.parameters())}")
        if unknown := unnamed_matrices(self.model):  # before any training, on every rank
            fail(f"{unknown[0]}: a 2-D parameter that MATRICES does not name: it would be missing from the artifact",
                 self.log)
        self.compiled = self.compile(self.model, dynamic=False, fullgraph=True)
        # the RoPE tables are the only buffers, identical on every rank: no broadcast per forward
        self.trainer = DDP(self.compiled, device_ids=[local_rank] if cuda else None,
                           broadcast_buffers=False) if world > 1 else self.compiled
        self.optimizers = make_optimizers(self.model, h)
        self.val_tokens, self.luts = val_tokens.to(device), byte_luts(sp, h.vocab_size, device)
        self.bos = h.bos_id
        self.val_seqs = max(1, h.val_batch_size // (world * h.train_seq_len))
        self.sliding = not h.ttt or bool(h.eval_sliding)  # with TTT the scored pass is TTT's
        self.train_seqs = h.train_batch_tokens // (8 * h.train_seq_len)  # per micro-batch per rank
        reserve = h.gptq_reserve_seconds if h.quant_method == "gptq" else 0.0  # GPTQ's calibration is training time
        self.cap_ms = 1000 * (h.max_wallclock_seconds - reserve) if h.max_wallclock_seconds > 0 else 0.0

    def log(self, msg: str, echo: bool = True) -> None:
        if self.rank == 0:
            if echo:
                print(msg, flush=True)
            self.logfile.write(msg + "\n")
            self.logfile.flush()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def val(self, stride: int, batch_seqs: int, seq_len: int, tokens: torch.Tensor | None = None) -> tuple[float, float]:
        def nll_fn(x, y):
            with torch.inference_mode(), self.autocast:
                return self.compiled(x, y, reduction="none")
        return evaluate(nll_fn, self.val_tokens if tokens is None else tokens, self.luts, seq_len, stride, batch_seqs)

    def val_plain(self) -> tuple[float, float]:
        """Non-overlapping windows of TRAIN_SEQ_LEN: the periodic validation and the quantization gap."""
        return self.val(self.h.train_seq_len, self.val_seqs, self.h.train_seq_len)

    def train_step(self, stream: TokenStream, step: int, lr_mul: float) -> torch.Tensor:
        h, model = self.h, self.model
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            x, y = stream.batch(self.train_seqs, h.train_seq_len, self.rank, self.world, self.device)
            if self.world > 1:
                self.trainer.require_backward_grad_sync = micro == self.accum - 1
            with self.autocast:
                loss = self.trainer(x, y)
            (loss / self.accum).backward()
            loss_sum += loss.detach() / self.accum
        set_schedule(self.optimizers, h, step, lr_mul)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if h.sphere_opt == "retract":
            model.renorm_()
        return loss_sum

    def lr_mul(self, step: int, elapsed_ms: float) -> float:
        """A linear warm-up over LR_WARMUP_STEPS, 1, then a linear warm-down to MIN_LR over the last WARMDOWN_ITERS
        steps (estimated from the step time when the wall clock is capped)."""
        h, cap_ms = self.h, self.cap_ms
        warm = min(1.0, (step + 1) / h.lr_warmup_steps) if h.lr_warmup_steps > 0 else 1.0
        if h.warmdown_iters <= 0:
            return warm
        if cap_ms <= 0:
            left = min(1.0, max(h.iterations - step, 0) / h.warmdown_iters)
        else:
            left = min(1.0, max(cap_ms - elapsed_ms, 0.0) / max(h.warmdown_iters * elapsed_ms / max(step, 1), 1e-9))
        return warm * (h.min_lr + (1 - h.min_lr) * left)

    def warm_up(self, train_files: list[str]) -> None:
        """Compile and warm up on WARMUP_STEPS steps, then restore the initial weights and optimizer state."""
        h, model = self.h, self.model
        self.sync()
        t0 = time.perf_counter()
        initial = copy.deepcopy(model.state_dict()), [copy.deepcopy(o.state_dict()) for o in self.optimizers]
        stream = TokenStream(train_files, h.vocab_size, pin=self.cuda)
        for step in range(h.warmup_steps):
            self.train_step(stream, step, 1.0)
        model.load_state_dict(initial[0])
        for opt, state in zip(self.optimizers, initial[1]):
            opt.load_state_dict(state)
        self.sync()
        self.log(f"warmup_steps:{h.warmup_steps} done, weights and optimizer state restored "
                 f"warmup_time:{1000 * (time.perf_counter() - t0):.0f}ms (compiles + warm-up steps, before the clock)")

    def train(self, train_files: list[str]) -> tuple[TokenStream, float, float, float]:
        """Train until ITERATIONS or the wall clock; returns the stream (calibration reads on from it), the training
        time (ms) and the final (val_loss, val_bpb) of the weights to export."""
        h = self.h
        stream = TokenStream(train_files, h.vocab_size, pin=self.cuda)
        cap_ms = self.cap_ms
        train_ms, elapsed, step, stop, compiles = 0.0, 0.0, 0, False, 0
        self.sync()
        t0 = time.perf_counter()
        while True:
            last = step == h.iterations or stop
            if last or (h.val_loss_every > 0 and step > 0 and step % h.val_loss_every == 0):
                self.sync()
                train_ms += 1000 * (time.perf_counter() - t0)
                val_loss, val_bpb = self.val_plain()
                self.log(f"step:{step}/{h.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                         f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
                self.sync()
                t0 = time.perf_counter()
            if last:
                self.log(f"train_phase_compiles:{compiles}" + (" (graphs compiled inside the timed training: the "
                         "warm-up missed one)" if compiles else ""))
                self.log_peak_memory("train")
                return stream, train_ms, val_loss, val_bpb
            graphs = compiled_graphs()
            loss = self.train_step(stream, step, self.lr_mul(step, elapsed))
            compiles += compiled_graphs() - graphs
            step += 1
            self.sync()
            # every rank's loss and clock in one collective; the slowest clock drives the schedule and the stop rule,
            # so every rank computes the same learning rates and stops at the same step
            clock = torch.tensor(train_ms + 1000 * (time.perf_counter() - t0), dtype=torch.float64, device=self.device)
            stats = torch.stack([loss.double(), clock])
            if self.world > 1:
                gathered = [torch.zeros_like(stats) for _ in range(self.world)]
                dist.all_gather(gathered, stats)
                gathered = torch.stack(gathered)
                stats = torch.stack([gathered[:, 0].mean(), gathered[:, 1].max()])
            train_loss, elapsed = stats.tolist()
            stop = cap_ms > 0 and elapsed + 2 * elapsed / step >= cap_ms
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"train_loss is {train_loss} at step {step}: training diverged (lower the learning rates)")
            if step <= 10 or step % h.train_log_every == 0 or stop or step == h.iterations:
                self.log(f"step:{step}/{h.iterations} train_loss:{train_loss:.4f} train_time:{elapsed:.0f}ms step_avg:{elapsed / step:.2f}ms")
            if stop:
                self.log(f"stopping_early: wallclock_cap train_time:{elapsed:.0f}ms step:{step}/{h.iterations}")

    def budget(self) -> tuple[int, int]:
        """(lo, hi) model bytes for the export: code + model within BUDGET_WINDOW below SIZE_LIMIT, or
        TARGET_BYTES_PER_PARAM x parameters when that is smaller (A/Bs of small models at the pressure of 16 MB)."""
        lo, hi = int(SIZE_LIMIT * (1 - BUDGET_WINDOW)) - self.code_bytes, SIZE_LIMIT - self.code_bytes
        if self.h.target_bytes_per_param > 0:
            target = int(self.h.target_bytes_per_param * sum(p.numel() for p in self.model.parameters()))
            if target < hi:
                lo, hi = int(target * (1 - BUDGET_WINDOW)), target
        return lo, hi

    @torch.no_grad()
    def calibrate(self, stream: TokenStream, train_ms: float) -> dict[str, torch.Tensor]:
        """GPTQ's Hessians: GPTQ_BATCHES training micro-batches through the final weights on every rank, each matrix's
        input Gram matrix summed over ranks. It reads training data, so its time is training time (reserved by the stop
        rule: GPTQ_RESERVE_SECONDS)."""
        h = self.h
        self.sync()
        t0 = time.perf_counter()
        batches = (stream.batch(self.train_seqs, h.train_seq_len, self.rank, self.world, self.device)
                   for _ in range(h.gptq_batches))
        hessians = collect_hessians(self.model, batches, self.autocast)
        if self.world > 1:
            for t in hessians.values():
                dist.all_reduce(t)
        self.sync()
        ms = 1000 * (time.perf_counter() - t0)
        tokens = h.gptq_batches * self.train_seqs * h.train_seq_len * self.world
        self.log(f"calibration method:gptq batches:{h.gptq_batches} tokens:{tokens} time:{ms:.0f}ms "
                 f"train_time:{train_ms + ms:.0f}ms")
        if h.max_wallclock_seconds > 0 and ms > 1000 * h.gptq_reserve_seconds:
            self.log(f"warning: calibration took {ms / 1000:.1f}s, more than GPTQ_RESERVE_SECONDS={h.gptq_reserve_seconds}")
        self.log_peak_memory("calibration")
        return hessians

    def log_peak_memory(self, phase: str) -> None:
        """This rank's peak memory since the last phase (GPU; the CPU's max RSS cannot be reset: since the start)."""
        if self.cuda:
            self.log(f"peak_memory phase:{phase} allocated:{torch.cuda.max_memory_allocated() // 2**20}MiB "
                     f"reserved:{torch.cuda.max_memory_reserved() // 2**20}MiB")
            torch.cuda.reset_peak_memory_stats()
        else:
            import resource
            self.log(f"peak_memory phase:{phase} maxrss:{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}MiB")

    def export(self, path: str, hessians: dict | None) -> int:
        """Rank 0 saves the trained weights (final_model.pt) and writes the artifact (GPTQ with the calibration's
        Hessians, or round to nearest without); every rank returns code + model bytes."""
        h, code_bytes = self.h, self.code_bytes
        if self.rank == 0:
            torch.save(self.model.state_dict(), "final_model.pt")
            write_artifact(self.model, path, h, *self.budget(), hessians, self.log)
        if self.world > 1:
            dist.barrier()
        model_bytes = os.path.getsize(path)
        total = code_bytes + model_bytes
        self.log(f"submission_bytes code:{code_bytes} model:{model_bytes} total:{total} limit:{SIZE_LIMIT}")
        if total > SIZE_LIMIT:
            self.log(f"error: ARTIFACT TOO LARGE: {total} bytes is {total - SIZE_LIMIT} over the {SIZE_LIMIT}-byte limit; "
                     "this run cannot be submitted")
        return total

    def warm_up_eval(self, fwd, train_files: list[str]) -> dict[int, Rates] | None:
        """Compile (and run) every graph the scoring will use, on random tokens, before the evaluation clock: no
        validation token is read (#1530 was flagged for warming up on them). TTT: documents as long as the first
        training shard's, adapted and forward only (the deadline's path and the non-finite re-score), timed for
        every chunk TTT_PLAN may choose: the rates the plan and the deadline use; the adapters are thrown away, the
        base weights never trained. The sliding window, when it will run: its batch shape."""
        h, rates = self.h, None
        self.sync()
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(12345 + self.rank)
        if h.ttt:
            starts = np.flatnonzero(load_shard(train_files[0], h.vocab_size) == self.bos)
            tokens = warm_up_documents(h, self.world, h.vocab_size, self.bos, g, np.diff(starts).tolist())
            rates = ttt_warm_up(self.model, fwd, tokens.to(self.device), self.luts, h, self.bos, self.autocast,
                                self.sync, self.too_slow)
        if self.sliding:
            n = (self.world * h.eval_batch_seqs + 1) * h.eval_stride + h.eval_seq_len + 1
            self.val(h.eval_stride, h.eval_batch_seqs, h.eval_seq_len,
                     torch.randint(0, h.vocab_size, (n,), generator=g).to(self.device))
        self.sync()
        self.log(f"{'ttt' if h.ttt else 'eval'}_warmup_time:{1000 * (time.perf_counter() - t0):.0f}ms "
                 "(random tokens, before the evaluation clock)")
        for chunk, r in (rates or {}).items():
            self.log(f"ttt_rates chunk:{chunk} adapted:{r.adapted:.0f} scored tokens/s, forward_only:{r.forward:.0f} "
                     f"window tokens/s, forward_windows_per_token:{r.forward_ratio:.2f} per rank")
        return rates

    def too_slow(self, r: Rates) -> bool:
        """Whether a pass at these rates would overrun TTT_PLAN's share of the whole EVAL_BUDGET_SECONDS (the most
        time the plan can have): rank 0's verdict for every rank, so every rank times the same chunks."""
        late = torch.tensor(int(self.val_tokens.numel() - 1 > r.adapted * self.world * self.h.ttt_plan
                                * self.h.eval_budget_seconds), device=self.device)
        if self.world > 1:
            dist.broadcast(late, 0)
        return bool(late.item())

    def score(self, path: str, pre_bpb: float, train_files: list[str]) -> None:
        """The score comes from the file alone: poison every weight, load all of them from it, then evaluate. The
        evaluation phase (counted against the 600 s, EVAL_BUDGET_SECONDS its deadline) starts with reading the file,
        after the warm-up. With TTT the scored pass is TTT alone (EVAL_SLIDING=1 adds the sliding window)."""
        h = self.h
        fwd = StagedForward(self.model, self.compile) if h.ttt else None
        rates = self.warm_up_eval(fwd, train_files)
        graphs = compiled_graphs()
        self.sync()
        t_eval = time.perf_counter()
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(float("nan"))
        try:
            self.model.load_state_dict(load_artifact(path), strict=True)
        except (ValueError, RuntimeError) as e:
            fail(str(e), self.log)
        self.log(f"artifact_load_time:{1000 * (time.perf_counter() - t_eval):.0f}ms")
        self.sync()
        t0 = time.perf_counter()
        q_loss, q_bpb = self.val_plain()
        plain_s = time.perf_counter() - t0
        self.log(f"final_roundtrip_plain val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f} eval_time:{1000 * plain_s:.0f}ms")
        self.log(f"quant_gap_bpb:{q_bpb - pre_bpb:.4f}")
        base_bpb, base = q_bpb, "plain"
        if self.sliding:
            # its time, estimated from the plain pass (EVAL_SEQ_LEN / EVAL_STRIDE times the windows); with TTT it
            # may use at most half of what is left, the same decision on every rank (rank 0's clock)
            est = plain_s * h.eval_seq_len / h.eval_stride
            left = torch.tensor(h.eval_budget_seconds - (time.perf_counter() - t_eval), device=self.device)
            if self.world > 1:
                dist.broadcast(left, 0)
            if h.ttt and est > left.item() / 2:
                self.log(f"sliding_skipped: estimated {est:.0f}s, more than half of the {left.item():.0f}s left")
            else:
                base_bpb, base = self.score_sliding(), "sliding"
        self.log_peak_memory("eval")
        if h.ttt:
            self.score_ttt(fwd, rates, base_bpb, base, t_eval)
            self.log_peak_memory("ttt")
        self.log(f"eval_phase_time:{1000 * (time.perf_counter() - t_eval):.0f}ms")
        self.log(f"eval_phase_compiles:{compiled_graphs() - graphs}" + (" (graphs compiled inside the evaluation clock: "
                 "the warm-up missed a shape)" if compiled_graphs() > graphs else ""))

    def score_sliding(self) -> float:
        h = self.h
        self.sync()
        t0 = time.perf_counter()
        s_loss, s_bpb = self.val(h.eval_stride, h.eval_batch_seqs, h.eval_seq_len)
        self.sync()
        self.log(f"final_roundtrip val_loss:{s_loss:.4f} val_bpb:{s_bpb:.4f} eval_time:{1000 * (time.perf_counter() - t0):.0f}ms")
        self.log(f"final_roundtrip_exact val_loss:{s_loss:.8f} val_bpb:{s_bpb:.8f}")
        return s_bpb

    def score_ttt(self, fwd, rates: dict[int, Rates], base_bpb: float, base: str, t_eval: float) -> None:
        """The score with test-time training (the run's final score) and its gain over the plain (or sliding) score
        of the same weights; its time and that time scaled to the full validation split (FULL_VAL_TOKENS) on 8
        devices like this one; TTT_PLAN's chunk, its projection beside the time; the documents the deadline left
        unadapted."""
        h = self.h
        self.sync()
        t0 = time.perf_counter()
        deadline = t_eval + h.eval_budget_seconds if h.eval_budget_seconds > 0 else None
        chunk, projected = h.ttt_chunk, None
        if deadline is not None and len(plan_chunks(h)) > 1:  # the warm-up's rates: no validation token is read
            chunk, projected = plan_chunk(rates, self.val_tokens.numel() - 1, self.world, deadline - t0, h.ttt_plan)
            if self.world > 1:  # one plan for every rank: rank 0's (a rank's chunk must not depend on its own clock)
                choice = torch.tensor(chunk, device=self.device)
                dist.broadcast(choice, 0)
                chunk = int(choice.item())
        h.ttt_chunk = chunk
        loss, bpb, info = evaluate_ttt(self.model, self.val_tokens, self.luts, h, self.bos, self.autocast, fwd,
                                       deadline=deadline, rates=rates[chunk])
        self.sync()
        ms = 1000 * (time.perf_counter() - t0)
        if projected:
            self.log(f"ttt_plan chunk:{chunk} projected:{projected[chunk]:.1f}s actual:{ms / 1000:.1f}s "
                     f"share:{h.ttt_plan} of:{deadline - t0:.1f}s candidates:"
                     + ",".join(f"{c}={p:.1f}s" for c, p in projected.items()))
        self.log(f"final_ttt_roundtrip val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:{ms:.0f}ms")
        self.log(f"final_ttt_roundtrip_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}")
        full_s = ms / 1000 * FULL_VAL_TOKENS / self.val_tokens.numel() * self.world / 8
        self.log(f"ttt gain_bpb:{bpb - base_bpb:.4f} vs:{base} docs:{info['docs']} tokens:{info['tokens']} "
                 f"time:{ms:.0f}ms full_split_8x_this_device:{full_s:.0f}s")
        if info["hints"] is not None:
            self.log(f"ttt_tilt order:{h.tilt_order} hints:{info['hints']} targets:{info['tokens']} "
                     f"time:{1000 * info['hints_s']:.0f}ms")
        if h.ttt_phases:
            self.log(f"ttt_phases:{h.ttt_phases} steps_taken:{info['phase_steps']}")
        bad, late = info["nonfinite"], info["unadapted"]
        self.log(f"ttt_nonfinite_docs:{len(bad)}" + (f" first:{','.join(map(str, bad[:20]))}" if bad else ""))
        if late:
            self.log(f"ttt_deadline docs_unadapted:{len(late)} at:{t0 - t_eval + info['deadline_at']:.1f}s "
                     f"forward_only_tokens:{info['forward_tokens']} longest_adapted_segment:{info['longest_segment_s']:.1f}s "
                     f"first:{','.join(map(str, late[:20]))}")

    def close(self) -> None:
        if self.world > 1:
            del self.trainer  # DDP's reducer must not drop the last reference to the gloo group: it would do so holding the GIL
            dist.destroy_process_group()


def main():
    code = open(__file__, encoding="utf-8").read()
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    h, sp, train_files, val_tokens = read_inputs(world)
    run = Run(h, sp, val_tokens, code, rank, world, local_rank)
    try:  # training time: the warm-up is undone; calibration reads training data, so the clock counts it
        if h.warmup_steps > 0:
            run.warm_up(train_files)
        stream, train_ms, val_loss, val_bpb = run.train(train_files)
        hessians = run.calibrate(stream, train_ms) if h.quant_method == "gptq" else None
    except (ValueError, FloatingPointError) as e:
        fail(str(e), run.log)
    run.log(f"pre_quant val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}")
    total = run.export("final_model.ptz", hessians)  # not timed by the rules: between the two clocks
    run.score("final_model.ptz", val_bpb, train_files)  # the evaluation clock starts where the artifact is read
    run.close()
    if total > SIZE_LIMIT:
        fail(f"artifact is {total} bytes, over the {SIZE_LIMIT}-byte limit", run.log)


if __name__ == "__main__":
    main()
