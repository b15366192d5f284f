"""tools/bench.py on CPU with tiny shapes: the standard model's shapes, the CLI's train, eval and ttt modes, its errors.
Only that the numbers exist is checked here; their values come from the benchmark on real hardware. The memory mode's
numbers are checked: its fake-tensor counts against real tensors, its CUDA autocast against CUDA's kernels, its saved
activations against a hand count, and the default shape's training step against a 60 GB budget."""
import contextlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import train_gpt
from _logs import REPO
from tools import bench as bench_tool
from tools.bench import StandardGPT

BENCH = [sys.executable, str(REPO / "tools" / "bench.py")]
TINY = dict(NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", TRAIN_SEQ_LEN="64",
            EVAL_STRIDE="16", EVAL_BATCH_SEQS="4")


def bench(*args, env=TINY, timeout=120):
    # one thread: the shared 2-core machine makes multi-threaded tiny matmuls spin for hundreds of ms; no hyperparameter
    # from the caller's environment
    full_env = {**{k: v for k, v in os.environ.items() if k not in train_gpt.HPARAMS}, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(BENCH + list(args), env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


CPU = ["--device", "cpu", "--warmup", "1"]
# every command-line run of the tool below: name -> (arguments, environment)
RUNS = {"train": (CPU + ["--steps", "3", "--batch-tokens", "512"], TINY),
        "switches": (CPU + ["--mode", "switches", "--steps", "2", "--batch-tokens", "512"], {**TINY, "SMEAR": "1"}),
        "eval": (CPU + ["--mode", "eval", "--eval-tokens", "1024", "--gpus", "8"], TINY),
        "ttt": (CPU + ["--mode", "ttt", "--steps", "2", "--batch-tokens", "512", "--eval-tokens", "2048",
                       "--doc-tokens", "300"], TINY),
        "memory": (["--mode", "memory"], TINY), "memory_gpus3": (["--mode", "memory", "--gpus", "3"], TINY),
        "steps0": (["--steps", "0"], TINY), "batch100": (["--batch-tokens", "100"], TINY),
        "heads5": ([], {**TINY, "NUM_HEADS": "5"}), "help": (["--help"], TINY)}


@pytest.fixture(scope="module")
def runs():
    """Every run of RUNS side by side (each imports torch and times on one thread; only the numbers' existence and
    their arithmetic are checked): name -> CompletedProcess."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(RUNS)) as pool:
        return dict(zip(RUNS, pool.map(lambda case: bench(*case[0], env=case[1], timeout=300), RUNS.values())))


def test_standard_model_matches_ngpt_shapes_and_starts_at_uniform_loss():
    h = train_gpt.load_hparams(TINY)
    ngpt, std = train_gpt.GPT(h), StandardGPT(h)
    weights = [getattr(b, n) for b in ngpt.blocks for n in ("q", "k", "v", "o", "up", "down")]
    assert [p.shape for p in std.matrices()] == [p.shape for p in weights]  # nGPT's matrices() also holds q_gain
    assert sum(p.numel() for p in std.matrices()) == sum(p.numel() for p in weights)
    assert std.emb.weight.shape == ngpt.emb.weight.shape
    assert {n for n, p in std.named_parameters() if p.ndim < 2} == set()  # no biases, no norm weights
    x, y = torch.randint(h.vocab_size, (2, 3, h.train_seq_len))
    loss = std(x, y)
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(h.vocab_size)) < 0.3
    assert std(x, y, reduction="none").shape == y.shape


def test_train_mode_runs_both_models(runs):
    run = runs["train"]
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    assert out["mode"] == "train" and out["shape"]["batch_tokens"] == 512
    for name in ("ngpt", "angpt", "standard"):
        assert out[name]["ms_median"] > 0 and out[name]["tokens_per_s"] > 0 and out[name]["ms_iqr"] >= 0
        assert math.isfinite(out[name]["final_loss"])
    assert out["ngpt"]["params"] > out["standard"]["params"] == out["n_matmul"]  # nGPT adds only scalars
    assert out["ratio_ngpt_over_standard"] == pytest.approx(out["ngpt"]["ms_median"] / out["standard"]["ms_median"])
    assert out["ratio_angpt_over_ngpt"] == pytest.approx(out["angpt"]["ms_median"] / out["ngpt"]["ms_median"])
    assert out["angpt"]["params"] == out["ngpt"]["params"] and "anGPT/nGPT" in run.stdout
    assert "6 * N_matmul" in out["flop_formula"] and "ratio nGPT/standard" in run.stdout


def test_switches_mode_times_each_gain_against_the_default(runs):
    run = runs["switches"]
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    arms = ("as set", "SMEAR=0", "ATTN_GATE=1", "all flipped")
    assert all(out[a]["ms_median"] > 0 for a in arms) and out["as set"]["ratio"] == 1.0
    assert out["SMEAR=0"]["ratio"] == pytest.approx(out["SMEAR=0"]["ms_median"] / out["as set"]["ms_median"])
    assert bench_tool.switch_arms(train_gpt.load_hparams({**TINY, "SMEAR": "1"}))["all flipped"] == {
        "SMEAR": "0", "ATTN_GATE": "1"}


def test_eval_mode_projects_the_validation_time(runs):
    run = runs["eval"]
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    assert out["mode"] == "eval" and out["eval_tokens"] == 1024 and out["tokens_per_s"] > 0
    assert out["projected_s"] == pytest.approx(63_779_840 / (8 * out["tokens_per_s"]))
    assert out["under_600s"] == (out["projected_s"] < 600) and "projected full validation" in run.stdout


def test_ttt_mode_projects_and_prices_in_training_tokens(runs):
    run = runs["ttt"]
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    assert out["mode"] == "ttt" and out["eval_tokens"] == 2048 and out["docs"] > 2
    assert out["projected_s"] == pytest.approx(63_779_840 / (8 * out["tokens_per_s"]))
    assert out["ttt_cost_in_train_tokens"] == pytest.approx(out["train_tokens_per_s"] / out["tokens_per_s"])
    assert "one TTT token costs" in run.stdout


def test_help_and_bad_arguments(runs):
    assert runs["help"].returncode == 0
    for name, reason in (("steps0", "--steps 0"), ("batch100", "multiple of"), ("heads5", "NUM_HEADS=5")):
        run = runs[name]
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], run.stderr


PHASES = ("train", "eval", "ttt", "gptq")
SP8192 = dict(VOCAB_SIZE="8192", NUM_LAYERS="11", MLP_MULT="4")


def test_memory_fake_tensors_count_what_real_tensors_do():
    """The memory mode's counts on fake tensors (FakeTensorMode) equal, to the byte, the same hooks on a real CPU run
    at a tiny shape (2 layers x 64 dim, seq 64, batch 4): saved tensors by section and shape, live bytes."""
    h = train_gpt.load_hparams(TINY)
    torch.manual_seed(0)
    for measure, args in ((bench_tool.measure_train, (4,)), (bench_tool.measure_ttt, (3, 64)),
                          (bench_tool.measure_eval, (4, 64)), (bench_tool.measure_calibration, (4,))):
        fake, real = measure(h, *args, fake=True), measure(h, *args, fake=False)
        assert fake == real, measure.__name__
        assert fake["live_peak"] > 0
    train = bench_tool.measure_train(train_gpt.load_hparams({**TINY, "TRAIN_SEQ_LEN": "48"}), 4)
    assert set(train["saved"]) == {"embedding", "blocks", "logits", "weight_casts"}
    # the attention stand-in saves the fp32 log-sum-exp (B, H, T), never a T x T matrix
    assert ("blocks", (4, 4, 48), "float32", 4 * 4 * 48 * 4) in train["items"]
    assert not any(shape[-2:] == (48, 48) for _, shape, _, _ in train["items"])
    # what the forward leaves alive is what autograd saved, less the token ids (x and y: one int64 storage, made
    # before the count starts), plus the loss
    assert train["live_after_forward"] == sum(train["saved"].values()) - 2 * 4 * 48 * 8 + 4


def test_memory_cuda_autocast_emulation_matches_the_cuda_kernels(monkeypatch):
    for env in ({}, {"NORM": "approx"}, {"SPHERE_OPT": "wn"}, {"TTT_TARGETS": "q,k,v,o,up,down,head"}, SP8192):
        assert bench_tool.check_cuda_autocast(train_gpt.load_hparams({**TINY, **env, "MODEL_DIM": "64"})) == "", env
    # the check has teeth: without CUDA's fp32 pow the MLP's square would stay bf16
    fp32 = tuple(op for op in bench_tool.CUDA_AUTOCAST["fp32"] if not op.startswith("pow"))
    monkeypatch.setitem(bench_tool.CUDA_AUTOCAST, "fp32", fp32)
    assert "pow" in bench_tool.check_cuda_autocast(train_gpt.load_hparams(TINY))


@pytest.mark.parametrize("env", [{}, SP8192, {"NUM_KV_HEADS": "8", "ROPE_DIMS": "16", "MLP_MULT": "3"}])
def test_memory_saved_activations_match_a_hand_count(env):
    """An independent count, read off Block.forward under CUDA autocast, bytes per token of one block: q, k, v each
    save a bf16 copy of the fp32 residual (3 x 2d); q: RoPE output, 1/norm per head, unit output (2d + 4H + 2d); k:
    RoPE output, 1/norm (2kv + 4KVH); attention: q, k, v, output, fp32 LSE (2d + 2kv + 2kv + 2d + 4H); each LERP: y,
    1/norm, unit(y) - x in fp32, the fp32 sum, 1/norm (2d + 4 + 4d + 4d + 4); MLP: the input copy, up's output, the
    gained one, its fp32 cast for the square (CUDA autocast: pow is fp32), the bf16 square (2d + 2f + 2f + 4f + 2f).
    Per position (not per token): the bf16 cos/sin casts (4 x T x ROPE_DIMS), the LERPs' fp32 alphas (8d), the q and
    MLP gains' bf16 casts (2d + 2f). Embedding: the ids (x and y: one int64 storage), the fp32 embedding, 1/norm;
    logits: the head's bf16 input and the fp32 logits twice (scaled and log-softmax), 2 scalars."""
    h = train_gpt.load_hparams({**env, "NUM_LAYERS": "2", "SMEAR": "0"})  # the SmearGate: the bound below
    seqs, T = 2, h.train_seq_len
    d, H, K, V = h.model_dim, h.num_heads, h.num_kv_heads, h.vocab_size
    kv, f, tokens = K * d // H, int(h.mlp_mult * d), seqs * T
    per_token = (3 * 2 * d + (4 * d + 4 * H) + (2 * kv + 4 * K) + (4 * d + 4 * kv + 4 * H)) + 2 * (10 * d + 8) \
        + (2 * d + 10 * f)
    per_position = 4 * T * h.rope_dims + 10 * d + 2 * f
    saved = bench_tool.measure_train(h, seqs)["saved"]
    assert saved["blocks"] == h.num_layers * (tokens * per_token + per_position)
    assert saved["embedding"] == tokens * (2 * 8 + 4 * d + 4)
    assert saved["logits"] == tokens * (2 * d + 8 * V) + 8
    # SMEAR=1 saves about two fp32 copies of the embedding more (the shifted one and the sum before its norm)
    smear = bench_tool.measure_train(train_gpt.load_hparams({**env, "NUM_LAYERS": "2", "SMEAR": "1"}), seqs)["saved"]
    assert 8 * d * tokens <= smear["embedding"] - saved["embedding"] <= (8 * d + 64) * tokens


def check_memory_output(stdout: str) -> dict:
    out = last_json(stdout)
    assert out["mode"] == "memory" and set(out["phases"]) - {"tilt"} == set(PHASES)
    for name in out["phases"]:  # one row per phase, in GiB, with its breakdown
        row = next(line for line in stdout.splitlines() if line.split()[:1] == [name])
        assert f"{out['phases'][name]['total'] / 2**30:.2f} GiB" in row and "params" in row
    assert "worst phase:" in stdout and "H100" in stdout
    return out


def memory_in_process(env: dict, monkeypatch, capsys) -> dict:
    """bench.main(["--mode", "memory"]) in this process (no second torch import: seconds saved per test)."""
    for name in train_gpt.HPARAMS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bench_tool.main(["--mode", "memory"])
    return check_memory_output(capsys.readouterr().out)


def test_memory_mode_prints_the_four_phases_and_json(runs):
    run = runs["memory"]
    assert run.returncode == 0, run.stderr
    out = check_memory_output(run.stdout)
    train = out["phases"]["train"]
    assert set(train["parts"]) >= {"params", "grads", "optimizer", "ddp_buckets", "activations", "logits",
                                   "backward_transient"}
    assert train["parts"]["ddp_buckets"] == train["parts"]["grads"] > 0  # world 8
    assert out["worst_bytes"] == max(p["total"] for p in out["phases"].values()) and out["fits"]
    assert "saved for backward per token per layer" in run.stdout
    h = train_gpt.load_hparams(TINY)  # as many Hessians as train_gpt.collect_hessians makes on real tensors
    x, y = torch.randint(h.vocab_size, (2, 2, 16))
    assert out["hessians"] == len(train_gpt.collect_hessians(train_gpt.GPT(h), [(x, y)], contextlib.nullcontext()))
    run = runs["memory_gpus3"]
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1 and "--gpus 3 must divide 8" in lines[0], run.stderr


def test_memory_default_shape_training_step_fits_60_gb(monkeypatch, capsys):
    """The default shape (train_gpt.HPARAMS, 8 GPUs: 48 x 2048 tokens per micro-batch) must stay under 60 GB
    (60e9 bytes = 55.9 GiB) per rank in the training step, eager: 20 GB of an 80 GB H100 left for what the estimate
    does not count (CUDA context, workspaces, fragmentation)."""
    out = memory_in_process({}, monkeypatch, capsys)
    assert out["shape"]["batch_tokens"] == 48 * 2048 and out["world"] == 8
    train = out["phases"]["train"]["total"]
    assert train <= 60e9, f"training step {train / 1e9:.1f} GB = {train / 2**30:.1f} GiB per rank, over 60 GB"


def test_memory_counts_the_tilt_where_it_is_on(monkeypatch, capsys):
    """The n-gram tilt's phase (its hints computed over the whole split before TTT) and its hints kept through TTT,
    from a per-token measure on real tokens that is linear in the stream's length; none with TILT_ORDER=0."""
    h = train_gpt.load_hparams({"TILT_ORDER": "16"})
    small, large = bench_tool.measure_tilt(h, 2**14), bench_tool.measure_tilt(h, 2**16)
    assert small["hints_per_token"] == large["hints_per_token"] == 8  # int64, one per target
    assert 50 < large["peak_per_token"] < 400 and abs(small["peak_per_token"] / large["peak_per_token"] - 1) < 0.05
    on = memory_in_process({**TINY, "TILT_ORDER": "16"}, monkeypatch, capsys)["phases"]
    assert on["tilt"]["parts"]["ngram_hints"] == pytest.approx(on["tilt"]["per_token"] * bench_tool.VAL_TOKENS, abs=1)
    assert on["ttt"]["parts"]["tilt_hints"] == 8 * bench_tool.VAL_TOKENS
    off = memory_in_process({**TINY, "TILT_ORDER": "0"}, monkeypatch, capsys)["phases"]
    assert "tilt" not in off and "tilt_hints" not in off["ttt"]["parts"]


def test_memory_mode_at_the_sp8192_preset(monkeypatch, capsys):
    out = memory_in_process(SP8192, monkeypatch, capsys)
    assert out["shape"]["vocab_size"] == 8192 and out["shape"]["num_layers"] == 11
    logits = out["phases"]["train"]["parts"]["logits"]
    assert logits == 48 * 2048 * (2 * 512 + 8 * 8192) + 8  # the fp32 logits: 6 GiB of the step
    assert out["fits"]


@pytest.mark.gpu
def test_default_shape_on_gpu():
    run = bench("--steps", "5", "--warmup", "3", env={}, timeout=1200)
    assert run.returncode == 0, run.stderr
    assert "ratio nGPT/standard" in run.stdout and "ratio_ngpt_over_standard" in last_json(run.stdout)
