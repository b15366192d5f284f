"""tools/runlog.py on the logs users feed it: the real record folders of the public repository (tests/fixtures/records,
every generation of the official format) and synthetic logs of each layout. The numbers below were read by hand from
the logs and the folders' READMEs, not computed by the reader under test."""
import json
import subprocess
import sys

import pytest

from _logs import FAKE_SOURCE, REPO, SEPARATOR
from tools.runlog import parse_log, split_source

RECORDS = REPO / "tests" / "fixtures" / "records"
BASELINE = RECORDS / "2026-03-17_NaiveBaseline"
SLIDING = RECORDS / "2026-03-19_SlidingWindowEval"
MARCH_TTT = RECORDS / "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"
PR1855 = RECORDS / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"
PR2135 = RECORDS / "2026-05-01_SP8192_PR2130Base_Calib32"

# log: format, seed, score line, val_loss, val_bpb, steps, training ms (the stop line), calibration ms,
# evaluation ms (the whole evaluation), counted code bytes, plain code bytes, model bytes, total bytes
EXPECTED = {
    BASELINE / "train.log": ("official-march", 1337, "final_int8_zlib_roundtrip", 2.07269931, 1.22436570, 13780,
                             600038, None, 1401, 47642, 47642, 15815847, 15863489),
    SLIDING / "train.log": ("official-march", 1337, "final_int8_zlib_roundtrip", 2.01348383, 1.19250007, 13450, 600028,
                            None, 69881, 58340, 58340, 15816489, 15874829),
    # the whole evaluation: roundtrip 6,562 + sliding 74,066 + legal TTT 410,268 ms (README: ~410 s of TTT)
    MARCH_TTT / "train_seed1337.log": ("official-march", 1337, "legal_ttt", 1.88976776, 1.11922988, 7179, 600128, None,
                                       6562 + 74066 + 410268, 89458, 89458, 15887928, 15977386),
    MARCH_TTT / "train_seed2025.log": ("official-march", 2025, "legal_ttt", 1.88919190, 1.11888882, 7193, 600110, None,
                                       6601 + 73676 + 407984, 89458, 89458, 15900548, 15990006),
    MARCH_TTT / "train_seed42.log": ("official-march", 42, "legal_ttt", 1.89110239, 1.12002032, 7182, 600128, None,
                                     20430 + 97749 + 408049, 89458, 89458, 15787052, 15876510),
    PR1855 / "train_seed42.log": ("official-april", 42, "quantized_ttt_phased", 2.31944212, 1.05989454, 4945, 599592,
                                  4700, 508800, 31999, 157868, 15865260, 15897259),
    PR1855 / "train_seed0.log": ("official-april", 0, "quantized_ttt_phased", 2.32239991, 1.06124613, 4932, 599433,
                                 4900, 455100, 31999, 157868, 15868948, 15900947),
    PR1855 / "train_seed1234.log": ("official-april", 1234, "quantized_ttt_phased", 2.32423994, 1.06208695, 4917,
                                    599544, 4600, 470000, 31999, 157868, 15875551, 15907550),
    PR2135 / "train_seed42.log": ("official-april", 42, "quantized_ttt_phased", 2.31115900, 1.05610947, 5001, 599672,
                                  6900, 540100, 37155, 191274, 15910335, 15947490),
    PR2135 / "train_seed314.log": ("official-april", 314, "quantized_ttt_phased", 2.31227656, 1.05662016, 4983, 599593,
                                   6900, 567100, 37155, 191274, 15908150, 15945305),
    PR2135 / "train_seed0.log": ("official-april", 0, "quantized_ttt_phased", 2.31265572, 1.05679341, 4997, 599608,
                                 6900, 567100, 37155, 191274, 15905667, 15942822),
}


@pytest.mark.parametrize("path", list(EXPECTED), ids=lambda p: f"{p.parent.name[:22]}/{p.name}")
def test_real_logs_give_their_numbers(path):
    (fmt, seed, line, loss, bpb, steps, train_ms, calib_ms, eval_ms, code, plain, model, total) = EXPECTED[path]
    log = parse_log(path)
    assert (log["format"], log["seed"], log["world_size"]) == (fmt, seed, 8)
    assert log["score"]["name"] == line
    assert (log["score"]["val_loss"], log["score"]["val_bpb"]) == (loss, bpb)
    assert log["final_exact"] == {"val_loss": loss, "val_bpb": bpb}
    assert (log["steps"], log["train_loop_ms"], log["calibration_ms"], log["eval_time_ms"]) == (
        steps, train_ms, calib_ms, eval_ms)
    assert log["wallclock_stop"]
    # #677: calibration on training data is training time
    assert log["train_time_ms"] == train_ms + (calib_ms or 0)
    assert (log["code_bytes"], log["code_bytes_plain"]) == (code, plain)
    assert log["submission_bytes"] == {"code": code, "model": model, "total": total, "limit": None}
    assert log["nonfinite"] == [] and log["errors"] == [] and log["source"] is None


def test_march_step_times_and_header():
    log = parse_log(BASELINE / "train.log")
    # README: 43.5 ms/step; the last step line `step:13780/20000 val_loss:2.0606 val_bpb:1.2172 ... step_avg:43.54ms`
    assert log["step_avg_ms"] == 43.54
    assert log["val_steps"][-1] == {"step": 13780, "total": 20000, "val_loss": 2.0606, "val_bpb": 1.2172,
                                    "train_time_ms": 600038.0}
    assert log["train_steps"][0]["step"] == 1 and log["train_steps"][0]["train_loss"] == 6.9408
    assert log["hparams"]["train_seq_len"] == "1024" and log["hparams"]["iterations"] == "20000"
    assert log["hardware"] is None  # a console log: no nvidia-smi header


def test_march_ttt_alias_is_not_a_pass():
    """`final_int8_zlib_roundtrip_exact` after the sliding window repeats its score: the record's score is legal TTT's."""
    log = parse_log(MARCH_TTT / "train_seed1337.log")
    assert [p["name"] for p in log["passes"]] == ["final_int6_roundtrip", "final_int6_sliding_window", "legal_ttt"]
    assert log["aliases"] == ["final_int8_zlib_roundtrip_exact"]
    assert log["passes"][1]["val_bpb"] == 1.12165091  # the sliding window's exact digits
    assert log["step_avg_ms"] == 83.59


def test_april_format_step_lines_and_hyperparameters():
    log = parse_log(PR1855 / "train_seed42.log")
    assert log["hparams"]["compressor"] == "pergroup" and log["hparams"]["gptq_reserve_seconds"] == "0.5"
    assert len(log["hparams"]) == 124  # the `Hyperparameters:` block; the quantizer's indented list is not in it
    assert log["train_steps"][0] == {"step": 1, "total": 20000, "train_loss": 9.0087, "train_time_ms": 0.0,
                                     "step_avg_ms": None}
    assert log["train_steps"][-1]["step"] == 4500 and log["train_steps"][-1]["train_time_ms"] == 9.0 * 60_000
    # `4945/20000 val_loss: 2.3539 val_bpb: 1.0756`: time from the stop line at that step
    assert log["val_steps"][-1] == {"step": 4945, "total": 20000, "val_loss": 2.3539, "val_bpb": 1.0756,
                                    "train_time_ms": 599592.0}
    assert log["step_avg_ms"] == pytest.approx(599592 / 4945)  # 121.25 ms; submission.json: 121.3
    assert log["calibration_data"] == "training" and log["eval_time_source"] == "total_eval_time"
    # diagnostics of the unquantized model are no passes; with them the score would be 1.0640
    assert [p["name"] for p in log["passes"]] == ["quantized_ttt_phased"]


def test_march_val_bpb_enabled_line_is_not_a_loss():
    """`val_bpb:enabled tokenizer_kind=...` is in every March log: not a non-finite loss."""
    text = (BASELINE / "train.log").read_text()
    assert "\nval_bpb:enabled tokenizer_kind=sentencepiece" in text
    assert parse_log(BASELINE / "train.log")["nonfinite"] == []


def write(path, text):
    path.write_text(text)
    return path


def test_source_after_a_header_is_split_off(tmp_path):
    """The official scripts' layout: source, a line of '=', an nvidia-smi header, another line of '=', the log. And a
    log that prints a header before the source: the source is found between the separators either way."""
    header = ("Running Python 3.12.3\nRunning PyTorch 2.9.1+cu128\n"
              + "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |\n" * 8)
    body = ("world_size:8 grad_accum_steps:1\nseed:7\nstep:1/10 train_loss:6.9000 train_time:50ms step_avg:50.00ms\n"
            "step:10/10 val_loss:3.0000 val_bpb:1.5000 train_time:500ms step_avg:50.00ms\n"
            "Code size: 2000 bytes\nSerialized model int8+zlib: 3000 bytes\nTotal submission size int8+zlib: 5000 bytes\n"
            "final_int8_zlib_roundtrip val_loss:3.0100 val_bpb:1.5100 eval_time:1200ms\n"
            "final_int8_zlib_roundtrip_exact val_loss:3.01000000 val_bpb:1.51000000\n")
    sep = SEPARATOR + "\n"
    official = write(tmp_path / "official.txt", FAKE_SOURCE + "\n" + sep + header + "\n" + sep + body)
    header_first = write(tmp_path / "header_first.txt", header + sep + FAKE_SOURCE + "\n" + sep + body)
    for path in (official, header_first):
        log = parse_log(path)
        assert log["source"] == FAKE_SOURCE, path.name
        # the decoy lines inside the source's docstring (step:999 ... train_loss:nan, error:) are not log lines
        assert log["nonfinite"] == [] and log["errors"] == [] and log["steps"] == 10
        assert (log["hardware"], log["torch"], log["seed"]) == ("8x NVIDIA H100 80GB HBM3", "2.9.1+cu128", 7)
        assert log["score"]["val_bpb"] == 1.51 and log["eval_time_ms"] == 1200
    source, rest = split_source(header + sep + FAKE_SOURCE + "\n" + sep + body)
    assert source == FAKE_SOURCE and "Running PyTorch" in rest and "import os" not in rest


def test_nan_is_nonfinite_but_words_are_not(tmp_path):
    log = parse_log(write(tmp_path / "a.log", "Hyperparameters:\n  seed: 1\n"
                          "1/10 train_loss: nan train_time: 0.0m tok/s: 1\n2/10 val_loss: 9.0 val_bpb: inf\n"
                          "val_bpb:enabled tokenizer_kind=sentencepiece\n"))
    assert log["format"] == "official-april" and len(log["nonfinite"]) == 2


def test_timestamped_log(tmp_path):
    """2026-04-13's records piped their console through `ts`: every line starts with an epoch time."""
    lines = ["Hyperparameters:", "  seed: 3", "4832/20000 val_loss: 2.7711 val_bpb: 1.0728",
             "stopping_early: wallclock_cap train_time: 587091ms step: 4832/20000",
             "quantized_ttt_phased val_loss:2.76951521 val_bpb:1.07216564 eval_time:500104ms"]
    log = parse_log(write(tmp_path / "t.txt", "".join(f"1776143349.278 {line}\n" for line in lines)))
    assert (log["seed"], log["steps"], log["train_loop_ms"], log["score"]["val_bpb"]) == (3, 4832, 587091, 1.07216564)


def test_unknown_format_says_so(tmp_path):
    log = parse_log(write(tmp_path / "notes.txt", "some notes\nval_bpb 1.0\n"))
    assert log["format"] is None and log["unrecognized"].startswith("format not recognized")
    assert log["score"] is None


RUNLOG = [sys.executable, str(REPO / "tools" / "runlog.py")]


def test_cli_text_json_and_help(tmp_path):
    help_ = subprocess.run(RUNLOG + ["--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "usage:" in help_.stdout and "--json" in help_.stdout
    out = subprocess.run(RUNLOG + [str(PR2135 / "train_seed42.log"), str(MARCH_TTT / "train_seed42.log"), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["score"]["val_bpb"] for r in rows] == [1.05610947, 1.12002032]
    assert rows[0]["train_time_ms"] == 599672 + 6900 and rows[1]["eval_time_ms"] == 20430 + 97749 + 408049
    text = subprocess.run(RUNLOG + [str(BASELINE / "train.log")], capture_output=True, text=True)
    assert text.returncode == 0 and "val_bpb 1.2243657 (final_int8_zlib_roundtrip)" in text.stdout
    bad = subprocess.run(RUNLOG + [str(write(tmp_path / "x.txt", "hello\n"))], capture_output=True, text=True)
    assert bad.returncode == 1 and "format not recognized" in bad.stderr and len(bad.stderr.splitlines()) == 1
    missing = subprocess.run(RUNLOG + [str(tmp_path / "nope.txt")], capture_output=True, text=True)
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1


def test_ngpt_warm_up_rates_deadline_and_flash_attention_lines(tmp_path):
    """The lines a GPU call is sized from, as train_gpt.py prints them: the training's compile and warm-up time, the
    TTT warm-up's time and measured rates, the deadline's line, FlashAttention 3's check (or its absence)."""
    body = ("run_id:gc\nflash_attn_3: agrees with SDPA (eager and compiled, ops fwd: max abs difference 0.0039)\n"
            "world_size:1 grad_accum_steps:8 flash_attn_3:True\n"
            "warmup_steps:2 done, weights and optimizer state restored warmup_time:31234ms (compiles + warm-up steps, "
            "before the clock)\n"
            "step:40/20000 train_loss:5.1000 train_time:37000ms step_avg:925.00ms\n"
            "ttt_warmup_time:45678ms (random tokens, before the evaluation clock)\n"
            "ttt_rates chunk:128 adapted:123456 scored tokens/s, forward_only:654321 window tokens/s, "
            "forward_windows_per_token:1.85 per rank\n"
            "ttt_rates chunk:64 adapted:61000 scored tokens/s, forward_only:650000 window tokens/s, "
            "forward_windows_per_token:3.50 per rank\n"
            "ttt_deadline docs_unadapted:40 at:0.3s forward_only_tokens:98765 longest_adapted_segment:1.5s first:3,4\n"
            "ttt_tilt order:16 hints:1234 targets:131071 time:56ms\n")
    log = parse_log(write(tmp_path / "a.txt", FAKE_SOURCE + "\n" + SEPARATOR + "\n" + body))
    assert (log["warmup_steps"], log["train_warmup_time_ms"], log["warmup_time_ms"]) == (2, 31234.0, 45678.0)
    assert log["ttt_rates"] == {"chunk": 128, "adapted": 123456.0, "forward_only": 654321.0}  # no plan: TTT_CHUNK's
    assert [r["chunk"] for r in log["ttt_rates_by_chunk"]] == [128, 64] and log["ttt_plan"] is None
    planned = parse_log(write(tmp_path / "d.txt", FAKE_SOURCE + "\n" + SEPARATOR + "\n" + body
                              + "ttt_plan chunk:64 projected:300.5s actual:310.2s share:0.8 of:560.0s "
                              "candidates:128=150.1s,64=300.5s\n"))
    assert planned["ttt_plan"] == {"chunk": 64, "projected_s": 300.5, "actual_s": 310.2}
    assert planned["ttt_rates"] == {"chunk": 64, "adapted": 61000.0, "forward_only": 650000.0}
    assert log["ttt_deadline"] == {"docs_unadapted": 40, "at_s": 0.3, "forward_only_tokens": 98765,
                                   "longest_adapted_segment_s": 1.5} and log["ttt_docs_unadapted"] == 40
    assert log["ttt_tilt"] == {"order": 16, "hints": 1234, "targets": 131071, "time_ms": 56.0}
    older = parse_log(write(tmp_path / "c.txt", FAKE_SOURCE + "\n" + SEPARATOR + "\n" + body.replace(
        "longest_adapted_segment:", "longest_adapted_batch:")))  # this script's logs before segments
    assert older["ttt_deadline"]["longest_adapted_segment_s"] == 1.5
    assert log["flash_attn_3"] == "agrees with SDPA (eager and compiled, ops fwd: max abs difference 0.0039)"
    assert (log["world_size"], log["grad_accum_steps"], log["step_avg_ms"]) == (1, 8, 925.0)
    plain = parse_log(write(tmp_path / "b.txt", "run_id:gc\nworld_size:1 grad_accum_steps:8 flash_attn_3:False\n"))
    assert plain["flash_attn_3"] == "not in use (SDPA)" and plain["ttt_rates"] is None and plain["ttt_deadline"] is None
    assert plain["train_warmup_time_ms"] is None and plain["world_size"] == 1
