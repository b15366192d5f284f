"""Benchmark nGPT (train_gpt.GPT, exact and NORM=approx: anGPT) against a standard pre-norm Transformer of identical
shape, or time nGPT's eval.

  python tools/bench.py                       # train: ms/step, tokens/s, MFU of the three models and their ratios
  python tools/bench.py --mode eval --gpus 8  # eval: sliding-window tokens/s and the projected time for the val split
  python tools/bench.py --mode ttt            # test-time training: tokens/s, the projected time, and its cost against
                                              # a training step's per token (to carry a GPU's training speed over)
  python tools/bench.py --mode switches       # the settings against each training gain flipped (issue 23):
                                              # ms/step and the ratio, interleaved
  python tools/bench.py --mode memory         # per-rank peak GPU memory of a training step, an eval batch, a TTT batch
                                              # and GPTQ on --gpus H100s, estimated in seconds on the CPU (fake tensors)

Shapes and settings come from the same environment variables as train_gpt.py (NUM_LAYERS, MODEL_DIM, ...).
The memory mode computes nothing: see its section below (how it counts, and what it leaves out).
Both models train with Muon (block matrices) + Adam (embedding, scalars), bf16 autocast and torch.compile on CUDA,
as train_gpt.main does, on synthetic random tokens (no data loading, no all-reduce: one GPU's micro-batch).
The standard model: tied embedding, RMSNorm (F.rms_norm, no weight) pre-norm, RoPE, GQA attention through
train_gpt.attention, relu^2 MLP, plain residual, final RMSNorm, no biases; its block matrices have nGPT's shapes.
The last line of output is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt  # noqa: E402

VAL_TOKENS = 63_779_840  # the full validation split (sp1024)
FLOP_FORMULA = ("flops/token = 6 * N_matmul + 6 * n_layers * seq_len * d_attn (causal attention: 12*L*T*d_attn/2); "
                "N_matmul = block matrices + vocab*model_dim (tied output head); the same count for both models, "
                "so nGPT's extra elementwise work shows as lower MFU")


class StandardBlock(nn.Module):
    """x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)). Matrices stored like train_gpt.Block (model-dim axis last)."""

    def __init__(self, h):
        super().__init__()
        d, self.heads, self.kv_heads = h.model_dim, h.num_heads, h.num_kv_heads
        self.head_dim, hidden = d // h.num_heads, int(h.mlp_mult * d)
        shapes = dict(q=(d, d), k=(self.kv_heads * self.head_dim, d), v=(self.kv_heads * self.head_dim, d),
                      o=(d, d), up=(hidden, d), down=(hidden, d))
        for name, shape in shapes.items():
            setattr(self, name, nn.Parameter(torch.randn(shape) * 0.02))

    def forward(self, x, cos, sin):
        B, T, d = x.shape
        n = F.rms_norm(x, (d,))
        q = train_gpt.rope(F.linear(n, self.q).view(B, T, self.heads, self.head_dim), cos, sin)
        k = train_gpt.rope(F.linear(n, self.k).view(B, T, self.kv_heads, self.head_dim), cos, sin)
        v = F.linear(n, self.v).view(B, T, self.kv_heads, self.head_dim)
        x = x + train_gpt.attention(q, k, v, self.head_dim ** -0.5).reshape(B, T, -1) @ self.o
        return x + F.relu(F.linear(F.rms_norm(x, (d,)), self.up)).square() @ self.down


class StandardGPT(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.emb = nn.Embedding(h.vocab_size, h.model_dim)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.ModuleList(StandardBlock(h) for _ in range(h.num_layers))
        for name, table in zip(("cos", "sin"), train_gpt.rope_tables(h)):
            self.register_buffer(name, table, persistent=False)

    def matrices(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.parameters() if p.ndim == 2]

    def forward(self, idx, targets, reduction: str = "mean"):
        T = idx.size(1)
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = F.linear(F.rms_norm(x, (x.size(-1),)), self.emb.weight).float()
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction == "mean" else loss.view_as(targets)


def train_step_fn(model, h, device, batch_tokens: int, compile_: bool):
    """A closure running one full training step (forward, backward, optimizer steps, nGPT's renorm_ when
    SPHERE_OPT=retract, as train_gpt does) on a fixed synthetic batch; it returns the loss tensor (never read inside
    the step, so nothing syncs)."""
    cuda = device.type == "cuda"
    run = torch.compile(model, dynamic=False, fullgraph=True) if compile_ else model
    opts = train_gpt.make_optimizers(model, h)
    x, y = torch.randint(h.vocab_size, (2, batch_tokens // h.train_seq_len, h.train_seq_len), device=device)
    after = model.renorm_ if isinstance(model, train_gpt.GPT) and h.sphere_opt == "retract" else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = run(x, y)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        after()
        return loss
    return step


def timed(step, n: int, cuda: bool) -> list[float]:
    """Milliseconds of each of n calls: CUDA events on GPU (one sync at the end), perf_counter on CPU."""
    if not cuda:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            out.append(1000 * (time.perf_counter() - t0))
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def bench_train(args, h, device) -> dict:
    cuda = device.type == "cuda"
    models, steps = {}, {}
    approx = train_gpt.load_hparams({**os.environ, "NORM": "approx", "SPHERE_OPT": "retract"})
    for name, cls, hp in (("ngpt", train_gpt.GPT, h), ("angpt", train_gpt.GPT, approx), ("standard", StandardGPT, h)):
        torch.manual_seed(h.seed)
        models[name] = cls(hp).to(device)
        steps[name] = train_step_fn(models[name], hp, device, args.batch_tokens, args.compile)
    warmup_s = {}
    for name, step in steps.items():  # compile + warm-up, excluded from the timings
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
        warmup_s[name] = time.perf_counter() - t0
    times = {name: [] for name in steps}
    for r in range(args.rounds):  # interleaved: A then B, each round, so drift hits both
        n = args.steps // args.rounds + (r < args.steps % args.rounds)
        for name, step in steps.items():
            times[name] += timed(step, n, cuda)
    n_matmul = sum(p.numel() for p in models["standard"].matrices()) + h.vocab_size * h.model_dim
    flops_per_token = 6 * n_matmul + 12 * h.num_layers * h.train_seq_len * h.num_heads * (h.model_dim // h.num_heads) / 2
    out = dict(flop_formula=FLOP_FORMULA, n_matmul=n_matmul, flops_per_token=flops_per_token)
    for name, step in steps.items():
        q1, med, q3 = np.percentile(times[name], [25, 50, 75])
        tok_s = args.batch_tokens / (med / 1000)
        out[name] = dict(ms_median=med, ms_q1=q1, ms_q3=q3, ms_iqr=q3 - q1, tokens_per_s=tok_s,
                         params=sum(p.numel() for p in models[name].parameters()), final_loss=step().item(),
                         warmup_s=warmup_s[name],  # the --warmup steps, torch.compile included when on
                         mfu=flops_per_token * tok_s / (args.peak_tflops * 1e12) if cuda else None)
        mfu = f"{100 * out[name]['mfu']:.1f}% of {args.peak_tflops:g} TFLOP/s" if cuda else "n/a on CPU"
        print(f"{name:>8}: {med:9.2f} ms/step (IQR {q1:.2f}-{q3:.2f}), {tok_s:,.0f} tokens/s, {out[name]['params']:,} params, "
              f"MFU {mfu}, loss on the fixed batch after {args.warmup + args.steps + 1} steps {out[name]['final_loss']:.3f}")
    for a, b in (("ngpt", "standard"), ("angpt", "standard"), ("angpt", "ngpt")):
        out[f"ratio_{a}_over_{b}"] = out[a]["ms_median"] / out[b]["ms_median"]
    print(f"MFU formula: {FLOP_FORMULA}; here {flops_per_token:,.0f} flops/token")
    print(f"ratio nGPT/standard ms/step: {out['ratio_ngpt_over_standard']:.3f}; anGPT/standard: "
          f"{out['ratio_angpt_over_standard']:.3f}; anGPT/nGPT: {out['ratio_angpt_over_ngpt']:.3f}")
    return out


SWITCHES = ("SMEAR", "ATTN_GATE")  # issue 23's gains kept in train_gpt.py (ablations/README.md: the removed ones)


def switch_arms(h) -> dict[str, dict[str, str]]:
    """The settings --mode switches times: the environment's, each switch of SWITCHES flipped alone, and all of them
    flipped."""
    arms = {"as set": {}}
    for name in SWITCHES:
        arms[f"{name}={1 - getattr(h, name.lower())}"] = {name: str(1 - getattr(h, name.lower()))}
    arms["all flipped"] = {k: v for arm in arms.values() for k, v in arm.items()}
    return arms


def bench_switches(args, h, device) -> dict:
    """ms/step of train_gpt.GPT with each setting of switch_arms, interleaved in rounds, and each one's ratio to the
    environment's (what a switch costs at equal steps: the factor its step count is divided by at equal time)."""
    cuda, steps = device.type == "cuda", {}
    for name, env in switch_arms(h).items():
        hp = train_gpt.load_hparams({**os.environ, **env})
        train_gpt.check_config(hp, 1)
        torch.manual_seed(h.seed)
        model = train_gpt.GPT(hp).to(device)
        steps[name] = train_step_fn(model, hp, device, args.batch_tokens, args.compile)
        for _ in range(args.warmup):
            steps[name]()
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        n = args.steps // args.rounds + (r < args.steps % args.rounds)
        for name, step in steps.items():
            times[name] += timed(step, n, cuda)
    out, base = {}, float(np.median(times["as set"]))
    for name in steps:
        q1, med, q3 = np.percentile(times[name], [25, 50, 75])
        out[name] = dict(ms_median=med, ms_q1=q1, ms_q3=q3, ratio=med / base)
        print(f"{name:>11}: {med:9.2f} ms/step (IQR {q1:.2f}-{q3:.2f}), x{med / base:.3f} the settings as set")
    return out


def bench_eval(args, h, device) -> dict:
    cuda = device.type == "cuda"
    torch.manual_seed(h.seed)
    model = train_gpt.GPT(h).to(device).eval()
    compiled = torch.compile(model, dynamic=False, fullgraph=True) if args.compile else model

    def nll_fn(x, y):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return compiled(x, y, reduction="none")

    tokens = torch.randint(h.vocab_size, (args.eval_tokens + 1,), dtype=torch.int32, device=device)
    no = torch.zeros(h.vocab_size, dtype=torch.bool, device=device)
    luts = (torch.ones(h.vocab_size, dtype=torch.int64, device=device), no, no)  # every token 1 byte: only timing matters
    run = lambda t: train_gpt.evaluate(nll_fn, t, luts, h.eval_seq_len, h.eval_stride, h.eval_batch_seqs)  # noqa: E731
    t_warmup = time.perf_counter()
    for _ in range(args.warmup):  # two full-shape batches: compiles the one shape the timed pass uses
        run(tokens[:h.eval_seq_len + h.eval_stride * h.eval_batch_seqs + 1])
    if cuda:
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_warmup  # the --warmup passes, torch.compile included when on
    t0 = time.perf_counter()
    loss, _ = run(tokens)  # ends in .item(): synchronized
    seconds = time.perf_counter() - t0
    tok_s = args.eval_tokens / seconds
    projected = VAL_TOKENS / (tok_s * args.gpus)
    out = dict(eval_tokens=args.eval_tokens, seconds=seconds, warmup_s=warmup_s, tokens_per_s=tok_s, val_loss=loss,
               val_tokens=VAL_TOKENS, gpus=args.gpus, projected_s=projected, under_300s=projected < 300,
               under_600s=projected < 600,
               projection="linear in tokens and in GPUs (windows split evenly across ranks, no communication cost)")
    print(f"eval: {args.eval_tokens:,} tokens scored in {seconds:.2f} s = {tok_s:,.0f} tokens/s "
          f"(EVAL_SEQ_LEN={h.eval_seq_len} EVAL_STRIDE={h.eval_stride} EVAL_BATCH_SEQS={h.eval_batch_seqs})")
    print(f"projected full validation ({VAL_TOKENS:,} tokens) on {args.gpus} GPUs, scaling linearly: {projected:.1f} s "
          f"(under 300 s: {projected < 300}, under 600 s: {projected < 600})")
    return out


def synthetic_docs(n_tokens: int, mean: float, vocab: int, seed: int) -> torch.Tensor:
    """Random tokens cut into documents (BOS = 1) of exponentially distributed lengths with the given mean."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n_tokens + 1,), generator=g, dtype=torch.int32)
    at = 0
    while at < n_tokens:
        tokens[at] = 1
        at += 1 + int(torch.empty(()).exponential_(1 / mean, generator=g))
    return tokens


def bench_ttt(args, h, device) -> dict:
    """evaluate_ttt on synthetic documents (mean length --doc-tokens: the FineWeb split's by default), and one training
    step of nGPT (its train mode) per token, both on this device: their ratio carries a GPU's measured training speed
    over to TTT."""
    cuda = device.type == "cuda"
    torch.manual_seed(h.seed)
    model = train_gpt.GPT(h).to(device)
    step = train_step_fn(model, h, device, args.batch_tokens, args.compile)
    for _ in range(args.warmup):
        step()
    step_ms = float(np.median(timed(step, args.steps, cuda)))
    model = train_gpt.GPT(h).to(device)
    fwd = train_gpt.StagedForward(model, torch.compile) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    no = torch.zeros(h.vocab_size, dtype=torch.bool, device=device)
    luts = (torch.ones(h.vocab_size, dtype=torch.int64, device=device), no, no)
    tokens = synthetic_docs(args.eval_tokens, args.doc_tokens, h.vocab_size, h.seed).to(device)
    t0 = time.perf_counter()
    train_gpt.evaluate_ttt(model, tokens[:min(len(tokens), 4 * h.eval_seq_len)], luts, h, 1, autocast, fwd)  # warm-up
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, _, info = train_gpt.evaluate_ttt(model, tokens, luts, h, 1, autocast, fwd)
    seconds = time.perf_counter() - t0
    tok_s, train_tok_s = info["tokens"] / seconds, args.batch_tokens / (step_ms / 1000)
    projected = VAL_TOKENS / (tok_s * args.gpus)
    out = dict(eval_tokens=info["tokens"], docs=info["docs"], doc_tokens=args.doc_tokens, seconds=seconds,
               window_tokens_per_token=info["window_tokens"] / info["tokens"],
               warmup_s=warmup_s, tokens_per_s=tok_s, train_step_ms=step_ms, train_tokens_per_s=train_tok_s,
               ttt_cost_in_train_tokens=train_tok_s / tok_s, val_tokens=VAL_TOKENS, gpus=args.gpus, projected_s=projected,
               projection="linear in tokens and in GPUs; on a GPU other than the one measured: VAL_TOKENS x "
                          "ttt_cost_in_train_tokens / (that GPU's training tokens/s x GPUs)")
    print(f"ttt: {info['tokens']:,} tokens in {info['docs']} documents (mean {args.doc_tokens:g}) in {seconds:.2f} s = "
          f"{tok_s:,.0f} tokens/s (TTT_CHUNK={h.ttt_chunk} EVAL_SEQ_LEN={h.eval_seq_len} TTT_RANK={h.ttt_rank} "
          f"TTT_TARGETS={h.ttt_targets} TTT_BATCH_DOCS={h.ttt_batch_docs}); warm-up {warmup_s:.1f} s; "
          f"{info['window_tokens'] / info['tokens']:.2f} window tokens of forward + backward per scored token")
    print(f"training: {step_ms:.1f} ms/step of {args.batch_tokens:,} tokens = {train_tok_s:,.0f} tokens/s; "
          f"one TTT token costs {train_tok_s / tok_s:.2f} training tokens")
    print(f"projected full validation ({VAL_TOKENS:,} tokens) on {args.gpus} devices like this one: {projected:.1f} s")
    return out


# ------------------------------ memory: per-rank peak GPU memory, estimated on the CPU
# Nothing is computed: the model runs on FakeTensorMode tensors (shapes, dtypes, storages, autograd, no data), so the
# default shape's 98,304-token micro-batch costs as little as a tiny one. What autograd saves is counted with
# saved_tensors_hooks (distinct storages: views share theirs); what is live at each op with a TorchDispatchMode that
# follows every storage an op creates until it is freed (the eager peak, as the caching allocator holds it, less its
# 512-byte rounding). tests/test_bench.py checks both against real CPU tensors at a tiny shape: equal to the byte.
# CPU autocast casts fewer ops to fp32 than CUDA autocast (pow, exp, rsqrt, sum, ...: the MLP's square is fp32 on a GPU),
# so CUDA's policy for those ops is added to it for the measurement (CudaAutocast), and every run checks the result
# against the CUDA autocast kernels themselves on fake CUDA tensors (check_cuda_autocast: no autograd there).

GIB = 2 ** 30
H100_BYTES = 81_559 * 2 ** 20  # an H100 80 GB as nvidia-smi reports it: 79.6 GiB, 85.5e9 bytes
# CUDA autocast's policy (aten/src/ATen/autocast_mode.h) for ops that CPU autocast has no kernel for
CUDA_AUTOCAST = dict(
    fp32=("acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log1p", "log2", "reciprocal", "rsqrt", "sinh",
          "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm", "native_layer_norm",
          "group_norm", "cosine_similarity", "dist", "pdist", "renorm", "logsumexp"),
    fp32_dtype_arg=("sum", "sum.dim_IntList", "softmax.int", "log_softmax.int", "cumsum", "cumprod", "linalg_vector_norm"),
    lower=("addmv", "addr", "mv", "einsum", "chain_matmul", "linalg_multi_dot"),
    promote=("addcdiv", "addcmul", "atan2", "cross", "dot", "vdot", "scatter_add", "index_put"))
MEMORY_NOTES = (
    "eager: the tensors saved for backward as autograd saves them without torch.compile; Inductor's partitioner "
    "recomputes cheap ops and fuses elementwise chains, so a compiled step usually saves less: an upper bound",
    "attention: a stand-in that saves what FlashAttention saves (q, k, v, the bf16 output, the fp32 log-sum-exp "
    "B x H x T) and allocates FA3's backward accumulators (fp32 dq, dk, dv); no T x T matrix",
    "ddp_buckets: DDP's flat fp32 gradient buckets, about one more copy of the gradients, when world > 1",
    "resident through every phase, as train_gpt.Run keeps them: weights, optimizer state (Muon momentum for this rank's "
    "1/world share of the block matrices, Adam exp_avg + exp_avg_sq for the embedding and scalars), DDP buckets, the "
    "validation tokens (int32); from calibration on, the GPTQ Hessians",
    "not counted: the CUDA context, cuBLAS/NCCL workspaces, allocator fragmentation (reserved > allocated); the 60 GB "
    "(60e9 bytes) budget the tests hold the training step to leaves room for them")


def _autocast_kernel(op, policy: str):
    """A Python kernel for the AutocastCPU key that casts like CUDA autocast's `policy` for op, then runs op below it."""
    names = [a.name for a in op._schema.arguments]
    dtype_at = names.index("dtype") if "dtype" in names else None
    eligible = lambda t: isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64  # noqa: E731

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            leaves = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if eligible(t)]
            if policy == "fp32_dtype_arg":  # run in fp32 unless a dtype is given: the inputs are not cast
                given = kwargs.get("dtype") if dtype_at >= len(args) else args[dtype_at]
                if leaves and given is None:
                    args, kwargs = args[:dtype_at], {**kwargs, "dtype": torch.float32}
                return op(*args, **kwargs)
            to = dict(fp32=torch.float32, lower=torch.get_autocast_dtype("cpu"),
                      promote=torch.float32 if any(t.dtype == torch.float32 for t in leaves) else None)[policy]
            cast = lambda t: t.to(to) if to is not None and eligible(t) else t  # noqa: E731
            return op(*torch.utils._pytree.tree_map(cast, args), **torch.utils._pytree.tree_map(cast, kwargs))
    return kernel


class CudaAutocast:
    """bf16 autocast on the CPU that casts as CUDA autocast does: torch.autocast("cpu"), plus CUDA's policy for the ops
    in CUDA_AUTOCAST that CPU autocast leaves alone, registered on the AutocastCPU key while inside. Reusable."""

    def __enter__(self):
        self.lib = torch.library.Library("aten", "IMPL")
        for policy, ops in CUDA_AUTOCAST.items():
            for name in ops:
                if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "AutocastCPU"):
                    packet, _, overload = name.partition(".")
                    self.lib.impl(name, _autocast_kernel(getattr(getattr(torch.ops.aten, packet), overload or "default"),
                                                         policy), "AutocastCPU")
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()
        return self

    def __exit__(self, *exc):
        self.autocast.__exit__(*exc)
        self.lib._destroy()


class RealCudaAutocast:
    """CUDA's own bf16 autocast kernels, for fake CUDA tensors on a CPU-only build (torch.autocast("cuda") refuses
    without a GPU, so the thread-local switches are set directly)."""

    def __enter__(self):
        self.prev = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        torch.autocast_increment_nesting()

    def __exit__(self, *exc):
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", self.prev[0])
        torch.set_autocast_dtype("cuda", self.prev[1])


class BasicIndexing(torch.overrides.TorchFunctionMode):
    """Tensor[...] with ints, slices, None and Ellipsis as aten select/slice/unsqueeze: Python indexing takes a device
    guard that a CPU-only build has none of for (fake) CUDA tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__:
            t, index = args
            index = index if isinstance(index, tuple) else (index,)
            if all(i is None or i is Ellipsis or isinstance(i, slice) or type(i) is int for i in index):
                real = sum(i is not None and i is not Ellipsis for i in index)
                at = index.index(Ellipsis) if Ellipsis in index else len(index)
                index = index[:at] + (slice(None),) * (t.dim() - real) + index[at + 1:]
                dim = 0
                for i in index:
                    if i is None:
                        t, dim = torch.ops.aten.unsqueeze.default(t, dim), dim + 1
                    elif isinstance(i, int):
                        t = torch.ops.aten.select.int(t, dim, i)
                    else:
                        start, stop, step = i.indices(t.size(dim))
                        t, dim = torch.ops.aten.slice.Tensor(t, dim, start, max(start, stop), step), dim + 1
                return t
        return func(*args, **(kwargs or {}))


class OpDtypes(TorchDispatchMode):
    """The aten ops run while active, each with its tensor inputs' and outputs' dtypes."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtypes = lambda x: tuple(str(t.dtype) for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor))  # noqa: E731
        if func.namespace == "aten":
            self.ops.append((str(func), dtypes((args, kwargs)), dtypes(out)))
        return out


def storage_key(t: torch.Tensor) -> tuple[int, StorageWeakRef]:
    ref = StorageWeakRef(t.untyped_storage())
    return ref.cdata, ref


class SavedTensors:
    """Bytes of the distinct storages autograd saves for backward while inside (saved_tensors_hooks), by `section`
    (set from outside as the forward goes); the model's own parameters and buffers are skipped (counted as weights);
    a whole storage in a weight matrix's shape (or its transpose) but not fp32 goes to weight_casts (autocast's bf16
    copies of the matrices). `items`: (section, shape, dtype, bytes) in the order saved."""

    def __init__(self, model: nn.Module):
        self.skip = {storage_key(t)[0] for t in (*model.parameters(), *model.buffers())}
        self.weight_shapes = {s for p in model.parameters() if p.ndim == 2 for s in (tuple(p.shape), tuple(p.shape)[::-1])}
        self.section, self.bytes, self.items, self.seen = "embedding", {}, [], set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key, _ = storage_key(t)
        if key not in self.seen and key not in self.skip:
            self.seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            cast = t.dtype != torch.float32 and tuple(t.shape) in self.weight_shapes and nbytes == t.numel() * t.element_size()
            section = "weight_casts" if cast else self.section
            self.bytes[section] = self.bytes.get(section, 0) + nbytes
            self.items.append((section, tuple(t.shape), str(t.dtype).removeprefix("torch."), nbytes))
        return t

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


class LiveBytes(TorchDispatchMode):
    """The peak over ops of the bytes of storages created by ops while active and still referenced: an op output
    counts unless it shares a storage with one of the op's inputs (a view or an in-place op), so what existed before
    (weights, gradients, inputs) never counts. `now` is exact after sweep(); `largest`: the largest floating storage
    created; `peak_op`: the op at the peak."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak, self.largest, self.peak_op = {}, 0, 0, 0, ""

    def sweep(self) -> int:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.now -= nbytes
        return self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = lambda x: [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]  # noqa: E731
        inputs = {storage_key(t)[0] for t in tensors((args, kwargs))}
        for t in tensors(out):
            key, ref = storage_key(t)
            old = self.live.get(key)
            if key in inputs or (old is not None and not old[0].expired()):
                continue
            nbytes = t.untyped_storage().nbytes()
            self.now += nbytes - (old[1] if old else 0)
            self.live[key] = (ref, nbytes)
            self.largest = max(self.largest, nbytes if t.is_floating_point() else 0)
        # `now` only overcounts (freed storages are found by sweeping): sweep before taking a new peak
        if self.now > self.peak and self.sweep() > self.peak:
            made = ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in tensors(out))
            self.peak, self.peak_op = self.now, f"{func} -> {made}"
        return out


class FlashAttentionStandIn(torch.autograd.Function):
    """What FlashAttention keeps and allocates, not what it computes: saves q, k, v, the output (q's shape and dtype,
    zeros here) and the fp32 log-sum-exp (B, H, T); its backward allocates fp32 accumulators for dq, dk and dv (FA3's)
    besides the gradients, and returns zeros."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.zeros_like(q)
        lse = torch.zeros(q.size(0), q.size(2), q.size(1), dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        accumulators = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (q, k, v)]  # noqa: F841
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


class Measuring:
    """While inside: train_gpt.attention is FlashAttentionStandIn; tensors are fake (FakeTensorMode) unless fake=False."""

    def __init__(self, fake: bool = True):
        self.fake = FakeTensorMode() if fake else contextlib.nullcontext()

    def __enter__(self):
        self.attention, train_gpt.attention = train_gpt.attention, lambda q, k, v, scale: FlashAttentionStandIn.apply(q, k, v)
        self.fake.__enter__()
        return self

    def __exit__(self, *exc):
        self.fake.__exit__(*exc)
        train_gpt.attention = self.attention


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_train(h, seqs: int, fake: bool = True) -> dict:
    """One training micro-batch (seqs x TRAIN_SEQ_LEN) forward under CudaAutocast and backward into existing fp32
    gradients (the 2nd..8th micro-batch of a step: the worst): the saved tensors by section (embedding, blocks, and
    logits: everything saved after the last block), the live bytes after the forward and at the peak, and the largest
    tensor the forward creates (an activation's gradient has its size and dtype: the simple bound of the backward's
    transient is saved + that)."""
    with Measuring(fake):
        model = train_gpt.GPT(h)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        x, y = torch.randint(h.vocab_size, (2, seqs, h.train_seq_len))
        saved, live = SavedTensors(model), LiveBytes()
        hooks = [model.blocks[0].register_forward_pre_hook(lambda *_: setattr(saved, "section", "blocks")),
                 model.blocks[-1].register_forward_hook(lambda *_: setattr(saved, "section", "logits"))]
        with live:
            with saved, CudaAutocast():
                loss = model(x, y)
            after_forward, largest = live.sweep(), live.largest
            loss.backward()
        for hook in hooks:
            hook.remove()
    return dict(saved=saved.bytes, items=saved.items, live_after_forward=after_forward, live_peak=live.peak,
                largest_forward_tensor=largest, peak_op=live.peak_op)


def ttt_lora(model, h, docs: int, grad: bool = True) -> dict:
    """evaluate_ttt's adapters for one batch of documents: {name: (a (docs, rank, in), b (docs, rows, rank))}, fp32."""
    params = dict(model.named_parameters())
    return {n: (torch.zeros(h.ttt_rank, params[n].size(1)).expand(docs, -1, -1).clone().requires_grad_(grad),
                torch.zeros(docs, params[n].size(0), h.ttt_rank, requires_grad=grad))
            for n in train_gpt.adapted_names(model, h.ttt_targets.split(","))}


def measure_ttt(h, docs: int, width: int, fake: bool = True) -> dict:
    """One TTT step of evaluate_ttt at its widest: `docs` windows of `width` tokens, fresh adapters, their per-window
    copies (batch_adapters), forward under CudaAutocast with frozen weights, backward into the adapters."""
    with Measuring(fake):
        model = train_gpt.GPT(h).requires_grad_(False)
        x, y = torch.randint(h.vocab_size, (2, docs, width))
        saved, live = SavedTensors(model), LiveBytes()
        with live:
            lora = ttt_lora(model, h, docs)
            adapter_bytes = tensor_bytes(t for pair in lora.values() for t in pair)
            adapters = train_gpt.batch_adapters(lora, docs)
            with saved, CudaAutocast():
                nll = model(x, y, reduction="none", lora=adapters).float()
            after_forward = live.sweep()
            nll.sum().backward()
    return dict(saved=saved.bytes, items=saved.items, live_after_forward=after_forward, live_peak=live.peak,
                adapter_bytes=adapter_bytes)


def measure_eval(h, seqs: int, seq_len: int, fake: bool = True) -> dict:
    """One sliding-window eval batch: seqs windows of seq_len, inference_mode + CudaAutocast, per-token nll."""
    with Measuring(fake):
        model = train_gpt.GPT(h).eval()
        x, y = torch.randint(h.vocab_size, (2, seqs, seq_len))
        with LiveBytes() as live, torch.inference_mode(), CudaAutocast():
            model(x, y, reduction="none")
    return dict(live_peak=live.peak)


def measure_calibration(h, seqs: int, fake: bool = True) -> dict:
    """train_gpt.collect_hessians on one training micro-batch: the Hessians' shapes (named as it names them) and the
    live peak of the calibration forward, the Hessians included."""
    with Measuring(fake):
        model = train_gpt.GPT(h)
        x, y = torch.randint(h.vocab_size, (2, seqs, h.train_seq_len))
        with LiveBytes() as live:
            hessians = train_gpt.collect_hessians(model, [(x, y)], CudaAutocast())
        shapes = {n: tuple(t.shape) for n, t in hessians.items()}
        matrices = {n: tuple(p.shape) for n, p in model.named_parameters() if p.ndim == 2}
    return dict(live_peak=live.peak, hessians=shapes, hessian_bytes=sum(4 * math.prod(s) for s in shapes.values()),
                matrices=matrices)


def measure_tilt(h, tokens: int = 2**20) -> dict:
    """train_gpt.ngram_hints on `tokens` random real tokens (fake tensors cannot follow its data-dependent masks): the
    live peak per token of computing the hints (its sorts and their permutations; linear in the stream's length), and
    the hints it returns (int64, one per target, kept through the TTT pass)."""
    stream = torch.randint(h.vocab_size, (tokens + 1,), generator=torch.Generator().manual_seed(h.seed))
    with LiveBytes() as live:
        hints = train_gpt.ngram_hints(stream, h.tilt_order, h.tilt_threshold)
    return dict(peak_per_token=live.peak / tokens, hints_per_token=tensor_bytes([hints]) / tokens)


def gptq_working_set(rows: int, cols: int, n: int) -> int:
    """Bytes train_gpt.quantize_matrix holds at once for a (rows, cols) matrix whose input has n features (read off
    gptq and inverse_hessian_factor): the normalized fp32 copy of W (4 rc) throughout; then either the factorization,
    H fp32 + its permutation + H fp64 + L + cholesky_inverse + U (all fp64: 4+4+8+8+8+8 = 40 n^2), or the column loop,
    H fp32 + U fp32 (8 n^2) + W, the steps, Q, Q's permuted copy (fp32, 16 rc) + the int8 result (rc)."""
    rc = rows * cols
    return 4 * rc + max(40 * n * n, 8 * n * n + 17 * rc)


def check_cuda_autocast(h) -> str:
    """The aten ops and dtypes of the training forward and a TTT forward (adapters) of this model, on fake tensors
    (one block, 2 x 16 tokens: no dtype depends on the depth or the batch), with CUDA's own autocast kernels on fake CUDA tensors (no autograd:
    a CPU-only build cannot record it for CUDA tensors) and with CudaAutocast on the CPU. Returns "" when they agree,
    else the first difference."""
    runs, h = [], SimpleNamespace(**{**vars(h), "num_layers": 1})  # every block is the same
    for device, autocast in (("cuda", RealCudaAutocast), ("cpu", CudaAutocast)):
        with Measuring(), BasicIndexing(), torch.device(device), torch.no_grad():
            model = train_gpt.GPT(h).requires_grad_(False)  # a leaf that requires grad takes a device guard in casts
            x, y = torch.randint(h.vocab_size, (2, 2, 16))
            with OpDtypes() as log, autocast():
                model(x, y)
                if h.ttt:
                    model(x, y, reduction="none", lora=ttt_lora(model, h, 2, grad=False))
        runs.append(log.ops)
    for i, (a, b) in enumerate(zip(*runs)):
        if a != b:
            return f"op {i}: CUDA autocast {a}, CudaAutocast {b}"
    return "" if len(runs[0]) == len(runs[1]) else f"{len(runs[0])} ops with CUDA autocast, {len(runs[1])} with CudaAutocast"


def bench_memory(args, h, device) -> dict:
    """Per-rank peak memory of training, eval, TTT and GPTQ at the shape of the environment's hyperparameters, for a
    world of --gpus ranks (one per GPU: each micro-batch is --batch-tokens, TRAIN_BATCH_TOKENS / 8 by default), against
    an H100's 80 GB. Eager numbers on fake tensors (see MEMORY_NOTES); the device argument is not used."""
    t0, world = time.perf_counter(), args.gpus
    why = check_cuda_autocast(h)
    if why:
        raise ValueError(f"CudaAutocast does not cast as CUDA autocast does ({why}): extend CUDA_AUTOCAST")
    seqs, seq_len = args.batch_tokens // h.train_seq_len, h.train_seq_len
    with Measuring():  # the optimizer's groups, as train_gpt.make_optimizers makes them (with a GPU's numerics)
        model = train_gpt.GPT(h)
        muon, adam = train_gpt.make_optimizers(model, SimpleNamespace(**{**vars(h), "gpu_numerics": 1, "compile": 0}))
        shapes = [tuple(p.shape) for p in muon.param_groups[0]["params"]]
        matrices = [math.prod(s) for s in shapes]
        adam_params = [p.numel() for group in adam.param_groups for p in group["params"]]
        params = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
        grads = tensor_bytes(model.parameters())
        flat = sum(matrices) * torch.empty((), dtype=getattr(muon, "dtype", torch.bfloat16)).element_size()  # bf16 on GPUs
    muon_state = max(4 * sum(matrices[r::world]) for r in range(world))  # rank r keeps momentum for matrices r, r+world, ...
    resident = dict(params=params, optimizer=muon_state + 8 * sum(adam_params), ddp_buckets=grads if world > 1 else 0,
                    val_tokens=4 * VAL_TOKENS)

    train = measure_train(h, seqs)
    got = train["saved"].get
    saved = dict(activations=got("embedding", 0) + got("blocks", 0), logits=got("logits", 0),
                 weight_casts=got("weight_casts", 0))
    # Muon.step: its flat update buffer, the list of fp32 updates its _foreach_add_ takes, and one matrix's Newton-Schulz
    # (a bound: grad + momentum in fp32, 6 bf16 copies of the matrix, 5 bf16 Gram-sized products)
    rows, cols = max(shapes, key=math.prod)
    ortho = 4 * rows * cols + 6 * 2 * rows * cols + 5 * 2 * min(rows, cols) ** 2
    step = dict(resident, grads=grads, muon_flat=flat, muon_updates=4 * sum(matrices), newton_schulz=ortho)
    bound = dict(resident, grads=grads, **saved, backward_transient=train["largest_forward_tensor"])
    measured = sum(resident.values()) + grads + train["live_peak"]

    ev = measure_eval(h, h.eval_batch_seqs, h.eval_seq_len)
    cal = measure_calibration(h, seqs)
    ttt_docs = h.ttt_batch_docs
    ttt = measure_ttt(h, ttt_docs, h.eval_seq_len) if h.ttt else None
    hess = cal["hessian_bytes"]
    hessian_of = getattr(train_gpt, "hessian_name", lambda name: name)  # q, k, v share one where train_gpt says so
    solve = max(gptq_working_set(*cal["matrices"][n], cal["hessians"][hessian_of(n)][0])
                for n in cal["matrices"] if hessian_of(n) in cal["hessians"])
    phases = {
        "train": dict(parts=bound, eager_peak=measured, eager_peak_op=train["peak_op"], optimizer_step=sum(step.values())),
        "eval": dict(parts=dict(resident, hessians=hess, forward_live=ev["live_peak"])),
        "gptq": dict(parts=dict(resident, hessians=hess, gptq_solve=solve),
                     calibration=sum(resident.values()) + cal["live_peak"]),
    }
    if ttt:
        # fwd_bwd_live: the adapters, their per-window copies and gradients, the saved activations, the transients
        phases["ttt"] = dict(parts=dict(resident, hessians=hess, adapter_adam=2 * ttt["adapter_bytes"],
                                        fwd_bwd_live=ttt["live_peak"]),
                             saved=ttt["saved"])
    if h.ttt and h.tilt_order:  # the hints of the whole split, made before the TTT pass and read through it
        tilt = measure_tilt(h)
        phases["tilt"] = dict(parts=dict(resident, hessians=hess, ngram_hints=round(tilt["peak_per_token"] * VAL_TOKENS)),
                              per_token=tilt["peak_per_token"])
        phases["ttt"]["parts"]["tilt_hints"] = round(tilt["hints_per_token"] * VAL_TOKENS)
    for name, ph in phases.items():
        ph["total"] = max(sum(ph["parts"].values()), ph.get("eager_peak", 0), ph.get("optimizer_step", 0),
                          ph.get("calibration", 0))
    worst = max(phases, key=lambda n: phases[n]["total"])
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    print(f"memory: per-rank peak of each phase, world {world}, micro-batch {seqs} x {seq_len} tokens, eval "
          f"{h.eval_batch_seqs} x {h.eval_seq_len}, TTT {ttt_docs} docs x {h.eval_seq_len} (rank {h.ttt_rank}, "
          f"{h.ttt_targets}); eager, on fake tensors; GiB = 2^30 bytes")
    for name in ("train", "eval", "tilt", "ttt", "gptq"):
        if name not in phases:
            continue
        ph = phases[name]
        extra = (f", eager live peak {gib(ph['eager_peak'])} (at {ph['eager_peak_op']}), optimizer step "
                 f"{gib(ph['optimizer_step'])}" if name == "train"
                 else f", calibration {gib(ph['calibration'])}" if name == "gptq"
                 else f"; the n-gram hints' {ph['per_token']:.0f} bytes per token, measured on 2^20 real tokens"
                 if name == "tilt" else "")
        parts = " + ".join(f"{k} {gib(v)}" for k, v in ph["parts"].items())
        print(f"  {name:<5} {gib(ph['total']):>6} GiB ({ph['total'] / 1e9:5.1f} GB) = max(sum {gib(sum(ph['parts'].values()))}"
              f"{extra}); sum = {parts}")
    total = phases[worst]["total"]
    print(f"worst phase: {worst}, {gib(total)} GiB = {total / 1e9:.1f} GB, {100 * total / H100_BYTES:.0f}% of an "
          f"H100's {H100_BYTES / GIB:.1f} GiB (81,559 MiB): {'fits' if total < H100_BYTES else 'DOES NOT FIT'}")
    per_layer = got("blocks", 0) / (h.num_layers * seqs * seq_len)
    print(f"saved for backward per token per layer: {per_layer:,.0f} bytes ({per_layer / h.model_dim:.1f} x MODEL_DIM); "
          f"estimated in {time.perf_counter() - t0:.1f} s")
    for note in MEMORY_NOTES:
        print(f"note: {note}")
    return dict(world=world, micro_batch_seqs=seqs, phases={n: {k: v for k, v in ph.items()} for n, ph in phases.items()},
                worst=worst, worst_bytes=total, capacity_bytes=H100_BYTES, fits=total < H100_BYTES,
                saved_per_token_per_layer=per_layer, hessians=len(cal["hessians"]), notes=list(MEMORY_NOTES))


def parse_args(argv, h):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"MFU: {FLOP_FORMULA}.")
    p.error = lambda message: (print(f"bench.py: error: {message}", file=sys.stderr), sys.exit(2))
    arg = p.add_argument
    arg("--mode", choices=("train", "eval", "ttt", "memory", "switches"), default="train")
    arg("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    arg("--compile", type=int, choices=(0, 1), help="torch.compile the models (default: COMPILE on CUDA, 0 on CPU)")
    arg("--steps", type=int, default=50, help="measured training steps per model")
    arg("--warmup", type=int, default=10, help="untimed warm-up steps (eval: passes) per model, compile included")
    arg("--rounds", type=int, help="interleaved rounds the measured steps are split into (default min(5, steps))")
    arg("--batch-tokens", type=int, default=h.train_batch_tokens // 8, help="tokens per step (default TRAIN_BATCH_TOKENS/8)")
    arg("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU (H100 SXM: 989)")
    arg("--eval-tokens", type=int, help="eval mode: tokens scored (default 2,000,000 on GPU, 16,384 on CPU)")
    arg("--gpus", type=int, default=8, help="eval and ttt modes: GPUs in the projection; memory mode: the world size "
        "(DDP buckets when > 1, each rank's 1/world share of Muon's momentum)")
    arg("--doc-tokens", type=float, default=VAL_TOKENS / 50_000, help="ttt mode: mean document length (default: the "
        "FineWeb split's, 63,779,840 tokens in 50,000 documents)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    args.compile = bool(h.compile and cuda if args.compile is None else args.compile)
    args.rounds = min(5, args.steps) if args.rounds is None else args.rounds
    args.eval_tokens = (2_000_000 if cuda else 16_384) if args.eval_tokens is None else args.eval_tokens
    min_eval = h.eval_seq_len + h.eval_stride * h.eval_batch_seqs
    for bad, message in [
        (args.steps < 1, f"--steps {args.steps} must be >= 1"),
        (args.warmup < 0, f"--warmup {args.warmup} must be >= 0"),
        (not 1 <= args.rounds <= args.steps, f"--rounds {args.rounds} must be in 1..--steps ({args.steps})"),
        (args.batch_tokens < h.train_seq_len or args.batch_tokens % h.train_seq_len,
         f"--batch-tokens {args.batch_tokens} must be a positive multiple of TRAIN_SEQ_LEN={h.train_seq_len}"),
        (args.peak_tflops <= 0 or args.gpus < 1, "--peak-tflops must be > 0 and --gpus >= 1"),
        (args.mode == "memory" and 8 % args.gpus, f"--gpus {args.gpus} must divide 8 (one rank per GPU, "
         "grad_accum_steps = 8 // world)"),
        (args.mode == "eval" and args.eval_tokens < min_eval, f"--eval-tokens {args.eval_tokens} must be >= EVAL_SEQ_LEN + "
         f"EVAL_STRIDE * EVAL_BATCH_SEQS = {min_eval} so every eval batch has the same shape"),
    ]:
        if bad:
            p.error(message)
    return args


def main(argv=None) -> None:
    try:
        h = train_gpt.load_hparams(os.environ)
        train_gpt.check_config(h, 1)
    except ValueError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    args = parse_args(argv, h)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run = dict(mode=args.mode, hardware=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
               compile=args.compile, flash_attn_3=train_gpt.flash_attn_func is not None and cuda, warmup=args.warmup)
    if args.mode in ("train", "switches"):
        run.update(steps=args.steps, rounds=args.rounds, peak_tflops=args.peak_tflops)
    if args.mode == "memory":  # nothing runs on a device and nothing is timed
        run = dict(mode=args.mode, hardware="none (fake tensors on the CPU)", torch=torch.__version__, target="H100 80GB")
    shape = dict(num_layers=h.num_layers, model_dim=h.model_dim, num_heads=h.num_heads, num_kv_heads=h.num_kv_heads,
                 mlp_mult=h.mlp_mult, vocab_size=h.vocab_size, train_seq_len=h.train_seq_len)
    if args.mode in ("train", "memory", "switches"):
        shape.update(batch_tokens=args.batch_tokens)
    if args.mode not in ("train", "switches"):
        shape.update(eval_seq_len=h.eval_seq_len, eval_stride=h.eval_stride, eval_batch_seqs=h.eval_batch_seqs)
    if args.mode == "memory":
        shape.update(world=args.gpus, ttt=h.ttt, ttt_batch_docs=h.ttt_batch_docs, ttt_rank=h.ttt_rank,
                     ttt_targets=h.ttt_targets, norm=h.norm, sphere_opt=h.sphere_opt)
    print(" ".join(f"{k}={v}" for k, v in {**run, **shape}.items()), flush=True)
    try:
        out = dict(train=bench_train, eval=bench_eval, ttt=bench_ttt, memory=bench_memory,
                   switches=bench_switches)[args.mode](args, h, device)
    except ValueError as e:  # the memory mode's self-check
        if args.mode != "memory":
            raise
        print(f"bench.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(dict(run, shape=shape, **out)))


if __name__ == "__main__":
    main()
