"""The GPU's numerics on the CPU: bf16 autocast and torch.compile, as every CUDA run uses them (GPU_NUMERICS=1 runs
the script itself so). GPTQ's Hessians in fp32 and a solve that cannot crash, one TTT graph for every batch and width,
compiled against eager under autocast, the adapters' norms in fp32, FlashAttention's start-up check."""
import contextlib
import math
import re

import pytest
import torch

import train_gpt
from conftest import train_tiny
from train_gpt import GPT, adapted_norm2, collect_hessians, evaluate_ttt, hessian_name, load_hparams, quantized_tensors

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
TINY = dict(NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", TRAIN_SEQ_LEN="64", MLP_MULT="4.25")


@pytest.fixture(scope="module")
def trained(tiny_shards):
    """A 2 x 64 model (MLP 4.25x, as the default) trained 40 steps under bf16 autocast, and a calibration stream."""
    h = load_hparams({**TINY, **tiny_shards.env})
    model, stream, _ = train_tiny(h, tiny_shards.data_path, 40, torch.autocast(**BF16))
    batches = [stream.batch(8, h.train_seq_len, 0, 1, "cpu") for _ in range(4)]
    return h, model, batches


def test_hessians_under_autocast_are_fp32_accurate_and_factor(trained):
    """Under bf16 autocast (as on every GPU) the Gram matrices were bf16: on this model Cholesky failed on some, and
    the script died in the GPTQ solve after training. They must be fp32, as accurate as an fp64 sum, and positive
    definite after GPTQ's 1% damping. q, k and v share one."""
    h, model, batches = trained
    with torch.autocast(**BF16):
        fast = collect_hessians(model, batches, torch.autocast(**BF16))
    ref = collect_hessians(model, batches, contextlib.nullcontext())
    assert sorted(fast) == sorted(ref)
    expected = {hessian_name(n) for n, p in model.named_parameters() if p.ndim == 2}
    assert set(fast) == expected and "blocks.0.qkv" in fast and "blocks.0.k" not in fast
    worst = 0.0
    for name, H in fast.items():
        assert H.dtype == torch.float32, name
        # the input itself differs by autocast's bf16 activations: compare with the eager fp32 sum loosely, and
        # check the factorization that GPTQ does
        err = ((H.double() - ref[name].double()).norm() / ref[name].double().norm()).item()
        worst = max(worst, err)
        damped = H.double() + 0.01 * H.diagonal().mean() * torch.eye(len(H), dtype=torch.float64)
        assert torch.linalg.cholesky_ex(damped).info.item() == 0, name
    print(f"worst relative difference to the fp32-eager Hessians: {worst:.2e}")
    assert worst < 0.05


def test_hessian_sum_is_exact_in_fp32_under_autocast():
    """The Gram matrix of a known input, collected under autocast, equals the fp64 product to fp32 accuracy (bf16
    products would be off by ~0.4%)."""
    hessians = {}
    x = torch.randn(3, 100, 48, dtype=torch.float64)
    with torch.autocast(**BF16):
        train_gpt.note_input(hessians, "m", x[:2].to(torch.bfloat16).float())
        train_gpt.note_input(hessians, "m", x[2:].to(torch.bfloat16).float())
    xb = x.to(torch.bfloat16).double().reshape(-1, 48)
    exact = xb.T @ xb
    assert hessians["m"].dtype == torch.float32
    assert ((hessians["m"].double() - exact).norm() / exact.norm()).item() < 1e-6


def test_indefinite_hessian_falls_back_and_is_logged(trained, tmp_path):
    """A Hessian made indefinite on purpose: GPTQ retries with more damping, then rounds that matrix to nearest; the
    export logs gptq_fallback and writes the artifact instead of raising."""
    h, model, batches = trained
    hessians = collect_hessians(model, batches, contextlib.nullcontext())
    d = hessians["blocks.1.o"].size(0)
    hessians["blocks.1.o"] = torch.eye(d) - 50 * torch.ones(d, d) / d  # diagonal 0.22, an eigenvalue of -49
    v = torch.nn.functional.normalize(torch.randn(64), dim=0)
    hessians["blocks.0.qkv"] = torch.eye(64) - 1.05 * torch.outer(v, v)  # eigenvalue -0.05: 10x the damping mends it
    fallbacks = {}
    tensors = quantized_tensors(model, h, 0.3, hessians, fallbacks)
    assert fallbacks["blocks.1.o"] == "rtn"
    assert fallbacks["blocks.0.q"] == fallbacks["blocks.0.k"] == fallbacks["blocks.0.v"] == "damp=0.1"
    assert all(how == "rtn" or how.startswith("damp=") for how in fallbacks.values())
    rtn = dict((n, a) for n, r, a in quantized_tensors(model, h, 0.3, None))
    assert (dict((n, a) for n, r, a in tensors)["blocks.1.o"] == rtn["blocks.1.o"]).all()
    lines = []
    h.quant_method = "gptq"
    size = train_gpt.write_artifact(model, str(tmp_path / "m.ptz"), h, 10_000, 10**7, hessians, lines.append)
    assert size == (tmp_path / "m.ptz").stat().st_size
    fb = [line for line in lines if line.startswith("gptq_fallback:")]
    assert len(fb) == 1 and re.match(r"gptq_fallback:\d+ ", fb[0]) and "blocks.1.o:rtn" in fb[0], lines


def test_adapted_norms_are_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(40, 64, generator=g), dim=-1)
    a, b = torch.randn(3, 4, 64, generator=g) / 8, torch.randn(3, 40, 4, generator=g) * 1e-3
    exact = (w.double() + b.double() @ a.double()).square().sum(-1)
    with torch.autocast(**BF16):
        n2 = adapted_norm2(w, a, b)
    assert n2.dtype == torch.float32
    assert (n2.double() - exact).abs().max().item() < 1e-5  # bf16 would be off by ~4e-3


def counting_backend(graphs: list):
    """A torch.compile backend that records every graph dynamo hands it and runs it as traced (no codegen)."""
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    return backend


def counting_compile(graphs: list):
    """A compile_fn (as Run.compile) with counting_backend."""
    return lambda fn, **kw: torch.compile(fn, backend=counting_backend(graphs), **kw)


def test_ttt_compiles_one_graph_for_every_batch_and_width():
    """TTT's forward is compiled with dynamic shapes, in stages (embedding, block, head): chunk widths 16, 32, 48,
    batches of 2 and 3 documents and both blocks must reuse one graph per stage (two for the block: the first one's
    input needs no gradient, the later ones' do; the same at any depth). Here the first width (16) equals the
    k adapter's rows (16) and the rank (2) the smallest batch: without the adapters' static dims dynamo ties their
    symbols and recompiles when they part."""
    import test_ttt as tt
    h, model = tt.tiny()
    graphs = []
    torch._dynamo.reset()
    fwd = train_gpt.StagedForward(model, counting_compile(graphs))
    tokens = tt.stream()
    with torch.autocast(**BF16):
        loss, _, info = evaluate_ttt(model, tokens, tt.luts(), h, tt.BOS, torch.autocast(**BF16), fwd)
    assert math.isfinite(loss) and info["nonfinite"] == []
    print(f"{len(graphs)} graph(s) for {info['docs']} documents")
    assert len(graphs) == 4
    # and the eager forward gives the same scores
    eager = evaluate_ttt(model, tokens, tt.luts(), h, tt.BOS, torch.autocast(**BF16))[0]
    assert loss == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("tilt", ["0", "2"])
def test_nothing_compiles_after_the_warm_up_whatever_the_pass_meets(tilt):
    """The warm-up (random tokens, before the evaluation clock) compiles every graph TTT uses: a pass that then meets
    non-finite scores (their re-score), phase steps and a deadline (every document forward only) compiles nothing
    more. Before, the re-score's adapters were built under grad and called under no_grad: dynamo recompiled
    ("requires_grad mismatch") inside the evaluation clock, minutes at full depth."""
    import test_ttt as tt
    h, model = tt.tiny(TTT_BATCH_DOCS=2, TTT_PHASES=2, TTT_PHASE_DOCS=3, TTT_PHASE_LR=0.05, TILT_ORDER=tilt)
    graphs, autocast = [], torch.autocast(**BF16)
    torch._dynamo.reset()
    fwd = train_gpt.StagedForward(model, counting_compile(graphs))
    warm = train_gpt.warm_up_documents(h, 1, tt.VOCAB, tt.BOS, torch.Generator().manual_seed(0))
    rates = train_gpt.ttt_warm_up(model, fwd, warm, tt.luts(), h, tt.BOS, autocast, lambda: None)
    compiled = len(graphs)
    print(f"{compiled} graphs in the warm-up; rates {rates}")
    # adapted: embedding, block (its input without and with gradient), head; forward only (and the re-score): 3; the
    # phase step: block (2) and head (its embedding is the adapted one's: grad mode on, the embedding frozen)
    assert compiled == 10
    tokens = tt.stream(n=1500)
    h.ttt_lr = 1e30
    info = evaluate_ttt(model, tokens, tt.luts(), h, tt.BOS, autocast, fwd)[2]
    assert info["nonfinite"] and info["phase_steps"] == 2
    info = evaluate_ttt(model, tokens, tt.luts(), h, tt.BOS, autocast, fwd, deadline=-1.0, rates=rates[h.ttt_chunk])[2]
    assert len(info["unadapted"]) == info["docs"] and info["phase_steps"] == 0
    assert len(graphs) == compiled


def test_compiled_matches_eager_under_autocast():
    """Inductor (the GPU's compiler; here its CPU code) against eager, both under bf16 autocast, against an fp64
    reference: the loss and every gradient no further from fp64 compiled than eager (the opaque normalize's reason to
    exist), one graph without breaks (fullgraph=True)."""
    h = load_hparams({**TINY, "NUM_LAYERS": "4", "VOCAB_SIZE": "512", "ATTN_GATE": "1"})  # both gates compiled
    torch.manual_seed(0)
    model = GPT(h)
    with torch.no_grad():
        model.emb.weight.normal_(0, 0.5)
        model.smear_weight.fill_(0.5)  # the SmearGate open (at init its gate's gradient is exactly 0)
        for block in model.blocks:
            block.attn_gate.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 512, (4, 64), generator=g), torch.randint(0, 512, (4, 64), generator=g)

    def run(fn, dtype=None):
        model.zero_grad(set_to_none=True)
        with torch.autocast(**BF16, enabled=dtype is None):
            loss = fn(x, y)
        loss.backward()
        return loss.item(), [p.grad.double().clone() for p in model.parameters()]

    torch._dynamo.reset()
    compiled = run(torch.compile(model, backend="inductor", dynamic=False, fullgraph=True))
    eager = run(model)
    model.double()
    exact = run(model, torch.float64)
    model.float()
    loss_c, loss_e = abs(compiled[0] - exact[0]), abs(eager[0] - exact[0])
    grad_c = max(((a - b).norm() / b.norm()).item() for a, b in zip(compiled[1], exact[1]))
    grad_e = max(((a - b).norm() / b.norm()).item() for a, b in zip(eager[1], exact[1]))
    print(f"vs fp64: loss compiled {loss_c:.2e} eager {loss_e:.2e}; worst gradient compiled {grad_c:.3f} eager {grad_e:.3f}")
    assert loss_c < 1e-2 and grad_c < 2 * grad_e + 0.01


def test_flash_attention_that_disagrees_falls_back(monkeypatch):
    monkeypatch.setattr(train_gpt, "flash_attn_func", None)
    right = train_gpt.check_flash_attention("cpu", fa=lambda q, k, v, softmax_scale, causal: train_gpt.sdpa_attention(
        q, k, v, softmax_scale))
    assert right.startswith("flash_attn_3: agrees with SDPA")

    def broken(q, k, v, softmax_scale, causal):
        return (torch.zeros_like(q),)
    monkeypatch.setattr(train_gpt, "flash_attn_func", broken)
    line = train_gpt.check_flash_attention("cpu")
    assert "falling back to SDPA" in line and train_gpt.flash_attn_func is None

    def raises(*a, **k):
        raise RuntimeError("no kernel image")
    monkeypatch.setattr(train_gpt, "flash_attn_func", raises)
    assert "eager raised RuntimeError: no kernel image" in train_gpt.check_flash_attention("cpu")
    assert train_gpt.flash_attn_func is None

    # a build that runs eagerly but that torch.compile cannot trace (a graph break under fullgraph=True)
    def untraceable(q, k, v, softmax_scale, causal):
        torch._dynamo.graph_break()
        return train_gpt.sdpa_attention(q, k, v, softmax_scale)
    monkeypatch.setattr(train_gpt, "flash_attn_func", untraceable)
    torch._dynamo.reset()
    line = train_gpt.check_flash_attention("cpu", lambda fn, **kw: torch.compile(fn, backend="eager", **kw))
    assert "compiled raised" in line and "falling back to SDPA" in line and train_gpt.flash_attn_func is None
    monkeypatch.setattr(train_gpt, "flash_attn_func", untraceable)
    line = train_gpt.check_flash_attention("cpu")  # without compile_fn: only the eager check
    assert line.startswith("flash_attn_3: agrees with SDPA (eager, ops") and train_gpt.flash_attn_func is untraceable


def test_requirements_floor_admits_only_a_torch_with_the_gpu_path():
    """DDP + torch.compile + FlashAttention 3's custom ops need torch >= 2.6 (pytorch#138787, in 2.6; SDPA's
    enable_gqa is 2.5); the records run 2.9.1."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    m = re.search(r"(?m)^torch>=(\d+)\.(\d+)", text)
    assert m and (int(m.group(1)), int(m.group(2))) >= (2, 6)
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert (major, minor) >= (int(m.group(1)), int(m.group(2)))


def test_whole_pipeline_under_gpu_numerics_on_two_ranks(tmp_path, tiny_run_env):
    """The script as a GPU runs it, on 2 CPU ranks: bf16 autocast and torch.compile (aot_eager: Inductor's C++
    builds would take minutes here) through training, calibration, GPTQ export, reload, scoring and TTT; then
    tools/check.py passes. Before the Hessians were fp32 this died in GPTQ's Cholesky after training (rank 0 raised,
    rank 1 hung in the barrier). With SMEAR (the default) and ATTN_GATE on: no graph compiles inside the timed training
    either, and the gates reach the artifact as fp16 gains, not matrices."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    script = shutil.copy(root / "train_gpt.py", tmp_path / "train_gpt.py")
    env = {**tiny_run_env, "GPU_NUMERICS": "1", "COMPILE_BACKEND": "aot_eager", "ITERATIONS": "20",
           "VAL_LOSS_EVERY": "10", "RUN_ID": "gpu_numerics", "MLP_MULT": "4.25", "TTT_BATCH_DOCS": "4",
           "SMEAR": "1", "ATTN_GATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train_gpt.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    body = (tmp_path / "logs" / "gpu_numerics.txt").read_text().split("=" * 100, 1)[1]
    assert re.search(r"(?m)^numerics: autocast:bf16 compile:aot_eager$", body)
    assert re.search(r"(?m)^export method:gptq ", body) and "gptq_fallback" not in body
    assert re.search(r"(?m)^final_ttt_roundtrip val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} eval_time:\d+ms$", body)
    assert re.findall(r"(?m)^peak_memory phase:(\w+) ", body) == ["train", "calibration", "eval", "ttt"]
    assert body.index("ttt_warmup_time:") < body.index("artifact_load_time:")
    # every graph compiled before the evaluation clock (the warm-up ran each shape on random tokens)
    assert re.search(r"(?m)^eval_phase_compiles:0$", body) and re.search(r"(?m)^train_phase_compiles:0$", body)
    tensors, _ = train_gpt.unpack_artifact((tmp_path / "final_model.ptz").read_bytes())
    roles = {n: r for n, r, _ in tensors}
    assert roles["smear_gate"] == roles["smear_weight"] == roles["blocks.0.attn_gate"] == "raw"
    assert {r for n, r, a in tensors if a.ndim == 2} <= {"unit", "rows", "step"}
    check = subprocess.run([sys.executable, str(root / "tools" / "check.py"), str(tmp_path / "logs" / "gpu_numerics.txt"),
                            "--script", str(script), "--ptz", str(tmp_path / "final_model.ptz")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
