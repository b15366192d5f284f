"""Benchmark nGPT (train_gpt.GPT, exact and NORM=approx: anGPT) against a standard pre-norm Transformer of identical
shape, or time nGPT's eval.

  python tools/bench.py                       # train: ms/step, tokens/s, MFU of the three models and their ratios
  python tools/bench.py --mode eval --gpus 8  # eval: sliding-window tokens/s and the projected time for the val split
  python tools/bench.py --mode ttt            # test-time training: tokens/s, the projected time, and its cost against
                                              # a training step's per token (to carry a GPU's training speed over)

Shapes and settings come from the same environment variables as train_gpt.py (NUM_LAYERS, MODEL_DIM, ...).
Both models train with Muon (block matrices) + Adam (embedding, scalars), bf16 autocast and torch.compile on CUDA,
as train_gpt.main does, on synthetic random tokens (no data loading, no all-reduce: one GPU's micro-batch).
The standard model: tied embedding, RMSNorm (F.rms_norm, no weight) pre-norm, RoPE, GQA attention through
train_gpt.attention, relu^2 MLP, plain residual, final RMSNorm, no biases; its block matrices have nGPT's shapes.
The last line of output is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    fwd = torch.compile(model, dynamic=True, fullgraph=True) if args.compile else model
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


def parse_args(argv, h):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"MFU: {FLOP_FORMULA}.")
    p.error = lambda message: (print(f"bench.py: error: {message}", file=sys.stderr), sys.exit(2))
    arg = p.add_argument
    arg("--mode", choices=("train", "eval", "ttt"), default="train")
    arg("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    arg("--compile", type=int, choices=(0, 1), help="torch.compile the models (default: COMPILE on CUDA, 0 on CPU)")
    arg("--steps", type=int, default=50, help="measured training steps per model")
    arg("--warmup", type=int, default=10, help="untimed warm-up steps (eval: passes) per model, compile included")
    arg("--rounds", type=int, help="interleaved rounds the measured steps are split into (default min(5, steps))")
    arg("--batch-tokens", type=int, default=h.train_batch_tokens // 8, help="tokens per step (default TRAIN_BATCH_TOKENS/8)")
    arg("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU (H100 SXM: 989)")
    arg("--eval-tokens", type=int, help="eval mode: tokens scored (default 2,000,000 on GPU, 16,384 on CPU)")
    arg("--gpus", type=int, default=8, help="eval and ttt modes: GPUs in the projection")
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
    if args.mode == "train":
        run.update(steps=args.steps, rounds=args.rounds, peak_tflops=args.peak_tflops)
    shape = dict(num_layers=h.num_layers, model_dim=h.model_dim, num_heads=h.num_heads, num_kv_heads=h.num_kv_heads,
                 mlp_mult=h.mlp_mult, vocab_size=h.vocab_size, train_seq_len=h.train_seq_len)
    shape.update(dict(batch_tokens=args.batch_tokens) if args.mode == "train" else
                 dict(eval_seq_len=h.eval_seq_len, eval_stride=h.eval_stride, eval_batch_seqs=h.eval_batch_seqs))
    print(" ".join(f"{k}={v}" for k, v in {**run, **shape}.items()), flush=True)
    out = dict(train=bench_train, eval=bench_eval, ttt=bench_ttt)[args.mode](args, h, device)
    print(json.dumps(dict(run, shape=shape, **out)))


if __name__ == "__main__":
    main()
