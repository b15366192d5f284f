"""train_gpt.py end to end on the CPU: a real 2-rank run and its log; bad inputs and divergence that stop fast with a
clear message on every rank; determinism."""
import math
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece as spm

from tools.check import counted_code_bytes
from tools.runlog import parse_log
from conftest import TINY_VAL_DOCS
from train_gpt import SIZE_LIMIT, byte_luts, load_tokens

ROOT = Path(__file__).resolve().parents[1]
SEPARATOR = "=" * 100


def test_tiny_two_rank_run(cpu_runs, tiny_shards):
    run = cpu_runs[0]
    assert run["returncode"] == 0
    source = run["script"].read_text(encoding="utf-8")
    assert source == (ROOT / "train_gpt.py").read_text(encoding="utf-8")
    text = run["log"].read_text(encoding="utf-8")
    assert text.startswith(source + "\n" + SEPARATOR + "\n")
    body = text[len(source) + len(SEPARATOR) + 2:]
    for line in ("run_id:cpu_seed1", "world_size:2 grad_accum_steps:4 flash_attn_3:False", "hparam SEED=1",
                 "hparam NUM_LAYERS=2", "hparam TRAIN_BATCH_TOKENS=4096", "hparam ITERATIONS=40"):
        assert re.search(rf"(?m)^{re.escape(line)}$", body), line
    train = re.findall(r"(?m)^step:(\d+)/40 train_loss:(\S+) train_time:\d+ms step_avg:\d+\.\d\dms$", body)
    val = re.findall(r"(?m)^step:(\d+)/40 val_loss:(\S+) val_bpb:(\S+) train_time:\d+ms step_avg:\d+\.\d\dms$", body)
    assert [int(step) for step, _ in train] == [*range(1, 11), 20, 30, 40]
    assert [int(step) for step, *_ in val] == [20, 40]
    first, last = float(train[0][1]), float(train[-1][1])
    print(f"{run['seconds']:.1f}s; train_loss {first} -> {last}; val_bpb {val[0][2]} -> {val[-1][2]}")
    assert last < first - 1

    # GPTQ's calibration after the last step: 4 batches of 8 sequences of 64 tokens on each of 2 ranks, its time added
    # to the training time, which is what the log parser (and check.py) then read
    calib = re.search(r"(?m)^calibration method:gptq batches:4 tokens:4096 time:(\d+)ms train_time:(\d+)ms$", body)
    last_val = re.findall(r"(?m)^step:40/40 val_loss:\S+ val_bpb:\S+ train_time:(\d+)ms", body)[-1]
    assert abs(int(calib.group(2)) - int(last_val) - int(calib.group(1))) <= 1
    assert parse_log(run["log"])["train_time_ms"] == int(calib.group(2))
    export = re.search(r"(?m)^export method:gptq step:(\S+)xRMS embed_step:\S+xRMS rtn_tries:\d+ gptq_tries:\d+ "
                       r"\(the finest step, below the budget window: the model is too small to fill it\) "
                       r"model_bytes:(\d+) bytes_per_param:\S+ export_time:\d+ms$", body)
    assert export and re.search(r"(?m)^artifact_load_time:\d+ms$", body)
    assert [m for m in re.findall(r"(?m)^peak_memory phase:(\w+) maxrss:\d+MiB$", body)] == ["train", "calibration", "eval", "ttt"]
    sizes = re.search(rf"(?m)^submission_bytes code:(\d+) model:(\d+) total:(\d+) limit:{SIZE_LIMIT}$", body)
    code, model, total = map(int, sizes.groups())
    assert (code, model, total) == (counted_code_bytes(source), run["ptz"].stat().st_size, code + model)
    assert int(export.group(2)) == model
    plain = re.search(r"(?m)^final_roundtrip_plain val_loss:\d+\.\d{4} val_bpb:(\d+\.\d{4}) eval_time:\d+ms$", body)
    assert plain and re.search(r"(?m)^quant_gap_bpb:-?\d+\.\d{4}$", body)
    assert re.search(r"(?m)^eval_phase_time:\d+ms$", body) and "error" not in body
    # TTT (on by default) on two ranks is the scored pass: no sliding window; its graphs compiled on random tokens
    # before the evaluation clock (which starts with reading the artifact)
    assert not re.search(r"(?m)^final_roundtrip(_exact)? ", body)
    assert body.index("ttt_warmup_time:") < body.index("artifact_load_time:")
    ttt = re.search(r"(?m)^final_ttt_roundtrip val_loss:\d+\.\d{4} val_bpb:(\d+\.\d{4}) eval_time:\d+ms$", body)
    ttt_exact = re.search(r"(?m)^final_ttt_roundtrip_exact val_loss:\d+\.\d{8} val_bpb:(\d+\.\d{8})$", body)
    gain = re.search(r"(?m)^ttt gain_bpb:(-?\d+\.\d{4}) vs:plain docs:(\d+) tokens:(\d+) time:\d+ms "
                     r"full_split_8x_this_device:\d+s$", body)
    assert ttt and ttt_exact and gain and re.search(r"(?m)^ttt_nonfinite_docs:0$", body)
    assert "ttt_deadline" not in body
    bpb = float(ttt_exact.group(1))
    assert abs(float(gain.group(1)) - (bpb - float(plain.group(1)))) <= 2e-4
    assert int(gain.group(2)) == TINY_VAL_DOCS and parse_log(run["log"])["final_exact"]["val_bpb"] == bpb

    # a uniform guess costs log2(vocab) bits per token; per byte with the validation tokens/bytes ratio
    tokens = load_tokens(f"{tiny_shards.data_path}/fineweb_val_*.bin").long()
    base, space, boundary = byte_luts(spm.SentencePieceProcessor(model_file=tiny_shards.tokenizer_path),
                                      tiny_shards.vocab_size, "cpu")
    n_bytes = (base[tokens[1:]] + (space[tokens[1:]] & ~boundary[tokens[:-1]])).sum().item()
    uniform = math.log2(tiny_shards.vocab_size) * (len(tokens) - 1) / n_bytes
    print(f"final val_bpb {bpb} (uniform guess {uniform:.4f})")
    assert math.isfinite(bpb) and bpb < uniform


# name: (environment, ranks, what the error line of every rank must say: each of these)
CASES = {
    "bad_magic": ({}, 2, ["bad shard header (want magic 20240520, version 1)"]),
    "truncated": ({}, 1, ["truncated or corrupt"]),
    "vocab": ({"VOCAB_SIZE": "1024"}, 1, ["VOCAB_SIZE=1024 but the tokenizer"]),
    # three settings wrong at once: one line names them all
    "config": ({"MODEL_DIM": "60", "NUM_HEADS": "8", "NUM_KV_HEADS": "3", "TRAIN_BATCH_TOKENS": "4000"}, 2,
               ["MODEL_DIM=60 is not divisible by NUM_HEADS=8", "NUM_HEADS=8 is not divisible by NUM_KV_HEADS=3",
                "TRAIN_BATCH_TOKENS=4000 does not split into whole sequences"]),
    "diverged": ({"EMBED_LR": "1e30"}, 2, ["training diverged"]),
}
DETERMINISM = {"same_seed_a": ({"SEED": "7"}, 1, None), "same_seed_b": ({"SEED": "7"}, 1, None)}
BUDGET_S = 0.5  # an evaluation deadline below TTT's need (about 2 s here alone, more beside the other cases)
PLAN_BUDGET_S, PLAN_SHARE = 30.0, 0.7  # the chunk of 64 projects 12-16 s here, 32 twice that
# every recipe option away from its default at once, on 2 ranks, with the RTN export filling a byte target and an
# evaluation deadline far too short (each part has its own test below)
OPTIONS = {"options": ({"SPHERE_OPT": "wn", "MUON_WD": "0.04", "LEAKY_SLOPE": "0.5", "MUON_MOMENTUM_WARMUP_STEPS": "5",
                        "QK_GAIN_INIT": "5", "ROPE_DIMS": "8", "QUANT_METHOD": "rtn", "TARGET_BYTES_PER_PARAM": "0.5",
                        "EVAL_BUDGET_SECONDS": str(BUDGET_S), "TTT_BATCH_DOCS": "2", "TTT_PLAN": "0.8"}, 2, None),
           # TTT_PLAN fills a budget that the default chunk (64, the window) leaves mostly unused
           "plan": ({"EVAL_BUDGET_SECONDS": str(PLAN_BUDGET_S), "TTT_PLAN": str(PLAN_SHARE)}, 1, None)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, cwd, env, ranks):
    """Start the ranks of train_gpt.py with the variables torchrun sets. Launched directly: torchrun kills the other
    ranks as soon as one fails, possibly before they report."""
    cwd.mkdir()
    port = str(free_port())
    procs = []
    for rank in range(ranks):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        with open(cwd / f"rank{rank}.out", "w") as out, open(cwd / f"rank{rank}.err", "w") as err:
            procs.append(subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=rank_env, stdout=out, stderr=err))
    return procs


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_shards, tiny_run_env):
    """Every case of CASES, DETERMINISM and OPTIONS started at once (10 iterations), waited for up to 300 s in all:
    name -> codes (None: killed at the deadline), out and err per rank, cwd, seconds."""
    work = tmp_path_factory.mktemp("e2e")
    script = shutil.copy(ROOT / "train_gpt.py", work / "train_gpt.py")
    data = {}
    for name in ("bad_magic", "truncated"):
        data[name] = shutil.copytree(tiny_shards.data_path, work / f"data_{name}")
    with open(data["bad_magic"] / "fineweb_train_000000.bin", "r+b") as f:
        f.write(b"\0\0\0\0")
    val = data["truncated"] / "fineweb_val_000000.bin"
    val.write_bytes(val.read_bytes()[:-1000])
    base = {**tiny_run_env, "ITERATIONS": "10", "VAL_LOSS_EVERY": "0", "EVAL_STRIDE": "64"}
    t0, running = time.monotonic(), {}
    for name, (env, ranks, _) in {**CASES, **DETERMINISM, **OPTIONS}.items():
        env = {**base, "RUN_ID": name, **({"DATA_PATH": str(data[name])} if name in data else {}), **env}
        running[name] = launch(script, work / name, env, ranks)
    results = {}
    while running and time.monotonic() - t0 < 300:
        for name, procs in list(running.items()):
            if all(p.poll() is not None for p in procs):
                results[name] = time.monotonic() - t0, [p.returncode for p in running.pop(name)]
        time.sleep(0.1)
    for name, procs in running.items():
        for p in procs:
            p.kill()
            p.wait()
        results[name] = time.monotonic() - t0, [None] * len(procs)
    return {name: SimpleNamespace(seconds=seconds, codes=codes, cwd=work / name,
                                  out=[(work / name / f"rank{r}.out").read_text() for r in range(len(codes))],
                                  err=[(work / name / f"rank{r}.err").read_text() for r in range(len(codes))])
            for name, (seconds, codes) in results.items()}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_every_rank_with_its_reason(case, launched):
    run, (_, ranks, messages) = launched[case], CASES[case]
    print(f"{case}: exit codes {run.codes} after {run.seconds:.1f}s ({len(launched)} cases at once)")
    assert len(run.codes) == ranks and all(code not in (0, None) for code in run.codes)
    for rank, err in enumerate(run.err):
        errors = [line for line in err.splitlines() if line.startswith(f"rank {rank}: error:")]
        assert len(errors) == 1 and all(m in errors[0] for m in messages), err[-3000:]
        assert "Traceback" not in err


def test_divergence_is_logged(launched):
    log = (launched["diverged"].cwd / "logs" / "diverged.txt").read_text()
    assert re.search(r"(?m)^error: train_loss is nan at step \d+: training diverged", log)


def test_same_seed_same_losses(launched):
    a, b = launched["same_seed_a"], launched["same_seed_b"]
    assert a.codes == b.codes == [0], a.err[0][-3000:] + b.err[0][-3000:]
    lines = [re.findall(r"(?m)^step:\d+/10 train_loss:\S+|^final_ttt_roundtrip_exact .*$", run.out[0]) for run in (a, b)]
    print("\n".join(lines[0]))
    assert len(lines[0]) == 11 and lines[0] == lines[1]


def test_every_recipe_option_runs_on_two_ranks(launched):
    run = launched["options"]
    assert run.codes == [0, 0], run.err[0][-3000:] + run.err[1][-3000:]
    log = (run.cwd / "logs" / "options.txt").read_text()
    for line in ("hparam SPHERE_OPT=wn", "hparam QK_GAIN_INIT=5.0", "hparam ROPE_DIMS=8"):
        assert line in log, line
    final = re.search(r"(?m)^final_ttt_roundtrip_exact val_loss:\S+ val_bpb:(\S+)$", log)
    assert final and math.isfinite(float(final.group(1))) and not re.search(r"(?m)^error:", log)


def test_evaluation_deadline_on_two_ranks(launched, tiny_shards):
    """EVAL_BUDGET_SECONDS below TTT's need: both ranks finish (no collective waits on another rank's decision), the
    log names the documents scored without adaptation, and every validation target is still scored once. Past the
    deadline only the forward-only path runs: the evaluation phase ends within the time it struck plus the forward-
    only tokens at the warm-up's measured rate (with slack for this crowded CPU: the fixture runs 8 cases on 2 cores,
    so the budget itself cannot be held here when scoring everything forward only takes longer; tests/test_ttt.py
    shows the pass ending within the budget plus one adapted batch on a clock that follows the rates)."""
    run = launched["options"]
    assert run.codes == [0, 0], run.err[0][-3000:] + run.err[1][-3000:]
    log = (run.cwd / "logs" / "options.txt").read_text()
    late = re.search(r"(?m)^ttt_deadline docs_unadapted:(\d+) at:(\d+\.\d)s forward_only_tokens:(\d+) "
                     r"longest_adapted_segment:(\d+\.\d)s first:[\d,]+$", log)
    chunk = re.search(r"(?m)^ttt_plan chunk:(\d+) ", log).group(1)
    forward_rate = float(re.search(rf"(?m)^ttt_rates chunk:{chunk} adapted:\d+ \S+ \S+ forward_only:(\d+) ", log).group(1))
    phase_s = int(re.search(r"(?m)^eval_phase_time:(\d+)ms$", log).group(1)) / 1000
    print(late.group(0), f"eval_phase_time {phase_s:.2f} s, budget {BUDGET_S} s, forward rate {forward_rate:.0f}/s")
    assert late and 0 < int(late.group(1)) <= TINY_VAL_DOCS
    assert phase_s <= float(late.group(2)) + 3 * int(late.group(3)) / forward_rate + 2.0
    gain = re.search(r"(?m)^ttt gain_bpb:\S+ vs:plain docs:(\d+) tokens:(\d+) ", log)
    n_targets = load_tokens(f"{tiny_shards.data_path}/fineweb_val_*.bin").numel() - 1
    assert int(gain.group(1)) == TINY_VAL_DOCS and int(gain.group(2)) == n_targets
    # tools/runlog.py reads these lines as the script writes them (the tilt is on by default)
    parsed = parse_log(run.cwd / "logs" / "options.txt")
    assert parsed["ttt_deadline"] == {"docs_unadapted": int(late.group(1)), "at_s": float(late.group(2)),
                                      "forward_only_tokens": int(late.group(3)),
                                      "longest_adapted_segment_s": float(late.group(4))}
    tilt = parsed["ttt_tilt"]
    assert tilt["order"] == 16 and tilt["targets"] == n_targets and 0 <= tilt["hints"] < n_targets
    assert tilt["time_ms"] is not None and tilt["time_ms"] >= 0


def test_the_plan_fills_the_budget_and_ends_within_it(launched):
    """TTT_PLAN: the warm-up measures the candidate chunks' rates from the coarsest on, stopping at the first whose
    pass could not fit the plan's share of the whole budget (finer ones are slower still); the plan picks the finest
    whose projected pass fits its share of the time left, logs it beside the actual time, and the evaluation ends
    within the budget (the deadline guards a projection gone wrong: within the budget plus its longest adapted
    segment)."""
    run = launched["plan"]
    assert run.codes == [0], run.err[0][-3000:]
    log = (run.cwd / "logs" / "plan.txt").read_text()
    measured = [int(c) for c in re.findall(r"(?m)^ttt_rates chunk:(\d+) adapted:\d+ ", log)]
    assert measured and measured == [64, 32, 16, 8][:len(measured)]
    plan = re.search(rf"(?m)^ttt_plan chunk:(\d+) projected:(\S+)s actual:(\S+)s share:{PLAN_SHARE} of:(\S+)s "
                     r"candidates:(\S+)$", log)
    chunk, projected, actual, left = int(plan.group(1)), *map(float, plan.groups()[1:4])
    print(plan.group(0))
    candidates = {int(c): float(p) for c, p in re.findall(r"(\d+)=([\d.]+)s", plan.group(5))}
    assert list(candidates) == measured
    whole = PLAN_SHARE * PLAN_BUDGET_S  # the stop: every measured chunk but the last fits the whole budget's share
    assert all(p <= whole + 0.05 for p in list(candidates.values())[:-1])
    assert len(measured) == 4 or candidates[measured[-1]] > whole - 0.05
    fits = [c for c, p in candidates.items() if p <= PLAN_SHARE * left]
    assert chunk == (min(fits) if fits else 64) and projected == candidates[chunk]
    parsed = parse_log(run.cwd / "logs" / "plan.txt")  # tools/runlog.py: the plan and the rates of its chunk
    assert parsed["ttt_plan"] == {"chunk": chunk, "projected_s": projected, "actual_s": actual}
    assert parsed["ttt_rates"]["chunk"] == chunk and [r["chunk"] for r in parsed["ttt_rates_by_chunk"]] == measured
    phase_s = int(re.search(r"(?m)^eval_phase_time:(\d+)ms$", log).group(1)) / 1000
    late = re.search(r"(?m)^ttt_deadline .*longest_adapted_segment:(\d+\.\d)s", log)
    assert phase_s <= PLAN_BUDGET_S + (float(late.group(1)) if late else 0.0) + 2.0


def test_target_bytes_per_parameter(launched):
    """TARGET_BYTES_PER_PARAM=0.5 on 2 ranks: the export fills 0.5 bytes per parameter, within the 0.5% window, or
    says that no try landed there: at this size the compressed bytes jump by ~6% at one step (zstd's per-block coding
    choice on 128k parameters), and the search then keeps the largest result that fits."""
    run = launched["options"]
    assert run.codes == [0, 0], run.err[0][-3000:]
    log = (run.cwd / "logs" / "options.txt").read_text()
    export = re.search(r"(?m)^export method:rtn step:\S+xRMS .*model_bytes:(\d+) bytes_per_param:(\S+) ", log)
    params, size = int(re.search(r"(?m)^model_params:(\d+)$", log).group(1)), int(export.group(1))
    print(export.group(0), params)
    assert 0.9 * 0.5 * params <= size <= 0.5 * params
    assert size >= 0.995 * 0.5 * params - 1 or "no try landed in the budget window: the largest that fits" in export.group(0)
