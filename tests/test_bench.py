"""tools/bench.py on CPU with tiny shapes: the standard model's shapes, the CLI's train, eval and ttt modes, its errors.
Only that the numbers exist is checked here; their values come from the benchmark on real hardware."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import train_gpt
from _logs import REPO
from tools.bench import StandardGPT

BENCH = [sys.executable, str(REPO / "tools" / "bench.py")]
TINY = dict(NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", TRAIN_SEQ_LEN="64",
            EVAL_STRIDE="16", EVAL_BATCH_SEQS="4")


def bench(*args, env=TINY, timeout=120):
    # one thread: the shared 2-core machine makes multi-threaded tiny matmuls spin for hundreds of ms
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(BENCH + list(args), env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


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


def test_train_mode_runs_both_models():
    run = bench("--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-tokens", "512")
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


def test_eval_mode_projects_the_validation_time():
    run = bench("--mode", "eval", "--device", "cpu", "--warmup", "1", "--eval-tokens", "1024", "--gpus", "8")
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    assert out["mode"] == "eval" and out["eval_tokens"] == 1024 and out["tokens_per_s"] > 0
    assert out["projected_s"] == pytest.approx(63_779_840 / (8 * out["tokens_per_s"]))
    assert out["under_600s"] == (out["projected_s"] < 600) and "projected full validation" in run.stdout


def test_ttt_mode_projects_and_prices_in_training_tokens():
    run = bench("--mode", "ttt", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-tokens", "512",
                "--eval-tokens", "2048", "--doc-tokens", "300")
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    assert out["mode"] == "ttt" and out["eval_tokens"] == 2048 and out["docs"] > 2
    assert out["projected_s"] == pytest.approx(63_779_840 / (8 * out["tokens_per_s"]))
    assert out["ttt_cost_in_train_tokens"] == pytest.approx(out["train_tokens_per_s"] / out["tokens_per_s"])
    assert "one TTT token costs" in run.stdout


def test_help_and_bad_arguments():
    assert bench("--help").returncode == 0
    for args, env, reason in [(["--steps", "0"], TINY, "--steps 0"), (["--batch-tokens", "100"], TINY, "multiple of"),
                              ([], {**TINY, "NUM_HEADS": "5"}, "NUM_HEADS=5")]:
        run = bench(*args, env=env)
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], run.stderr


@pytest.mark.gpu
def test_default_shape_on_gpu():
    run = bench("--steps", "5", "--warmup", "3", env={}, timeout=1200)
    assert run.returncode == 0, run.stderr
    assert "ratio nGPT/standard" in run.stdout and "ratio_ngpt_over_standard" in last_json(run.stdout)
