"""Read train logs: this project's train_gpt.py's and those of every generation of the challenge's records.

    python tools/runlog.py LOG... [--json]

One reader for every format. Its generations, how each is recognised and which of its final lines is the run's score:

| generation | recognised by | the score | why |
| --- | --- | --- | --- |
| `ngpt` (this project's train_gpt.py) | `run_id:`, `hparam `, `submission_bytes `, `final_roundtrip...` lines | `final_ttt_roundtrip_exact` with TTT, else `final_roundtrip_exact` (its `_exact` line is required) | the script prints the scored pass last; `final_roundtrip_plain` is the quantization gap's pass, never the score |
| `official-march` (the naive baseline and the March records) | `step:N/M ... train_time:Tms` | the last pass over the artifact, in `_exact` digits: `final_int8_zlib_roundtrip_exact` (baseline; the sliding window when `final_eval_mode:sliding_window`), `final_*_sliding_window*_exact`, `legal_ttt_exact` / `final_*ttt*` (TTT records) | their scripts run the artifact's passes weakest first and the record's score (the READMEs' val_bpb) last; the `final_int8_zlib_roundtrip_exact` line that follows a sliding-window pass with no pass of that name before it is an alias repeating that score for the official tooling, not a pass |
| `official-april` (April/May records: #1855, #2135) | `N/M train_loss: X train_time: Ym`, `Hyperparameters:` | the last `quantized*` / `legal_ttt*` line: `quantized_ttt_phased`, `quantized_ttt`, `legal_ttt_exact`, else `quantized_sliding_window`, else `quantized` (8 decimals) | as above; `diagnostic ...` and `pre-quantization ...` lines score the unquantized model, not the artifact |

A log of none of these says so (`format` None, `unrecognized` the reason); check.py then reports it as not recognized
instead of failing rules. The whole evaluation time: `total_eval_time` (official-april: the scripts time their
evaluation themselves), else `eval_phase_time` (ngpt), else the sum of the eval_time of every pass over the artifact
(official-march: the roundtrip, the sliding window and TTT are all evaluation; a diagnostic of the unquantized model is
not). Training time: the wallclock stop's (or the last step line's) train_time, plus calibration that reads training
data (organizers' issue #677): this script's `calibration` line, the records' `GPTQ:collected N Hessians in Ts`
(their calibration loader reads the training shards) or `gptq:calibrated N layers in Ts` after `(training data)`.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from pathlib import Path

SEPARATOR = "=" * 100
_SEP_RE = re.compile("^" + SEPARATOR + "$", re.MULTILINE)
LOSS_KEYS = ("train_loss", "val_loss", "val_bpb")
GENERATIONS = ("ngpt", "official-march", "official-april")


def _looks_like_source(text: str) -> bool:
    """Python that parses and defines or imports something (a header of key:value lines may parse, but defines nothing)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) for node in tree.body)


def split_source(text: str) -> tuple[str | None, str]:
    """Return (embedded source, the log's other text); source is None when the log holds none.

    The text between separator lines (100 '=') is cut into pieces; the source is the largest piece that is Python,
    wherever it sits (the scripts print it first, some logs print a header before it); the other pieces are log text.
    print() added one newline after the source; it is not part of the script."""
    starts = [m.start() for m in _SEP_RE.finditer(text)]
    if not starts:
        return None, text
    bounds = zip([0] + [s + len(SEPARATOR) + 1 for s in starts], starts + [len(text)])
    pieces = [text[a:b] for a, b in bounds]
    code = [i for i, piece in enumerate(pieces[:-1]) if _looks_like_source(piece)]
    if not code:
        return None, text
    i = max(code, key=lambda j: len(pieces[j]))
    source = pieces[i].removesuffix("\n")
    return source, "\n".join(piece for j, piece in enumerate(pieces) if j != i)


def _fields(line: str) -> dict[str, str]:
    """`a:1 b:2ms`, `a: 1 b: 2ms` and `a=1` -> {"a": "1", "b": "2ms"}; tokens without a separator are skipped."""
    out, tokens = {}, line.split()
    for i, tok in enumerate(tokens):
        key, sep, value = tok.partition(":")
        if not sep:
            key, sep, value = tok.partition("=")
        if sep and key:
            if not value and i + 1 < len(tokens) and ":" not in tokens[i + 1]:
                value = tokens[i + 1]
            out.setdefault(key, value)
    return out


def _num(value: str | None) -> float | None:
    """Float of a value such as '4.03', '812ms', '1234MiB', 'nan'; None when absent or unparsable."""
    try:
        return float(re.sub(r"(ms|MiB)$", "", value))
    except (TypeError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    number = _num(value)
    return int(number) if number is not None and number.is_integer() else None


def _seconds(value: str | None) -> float | None:
    """'12.5s' -> 12.5."""
    return _num(value.removesuffix("s")) if value else None


def _minutes_ms(value: str | None) -> float | None:
    """'9.9m' (official-april's train_time) -> 594000.0."""
    number = _num((value or "").removesuffix("m")) if (value or "").endswith("m") else _num(value)
    return None if number is None else number * 60_000


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _nonfinite(value: str) -> bool:
    """A loss written as nan or inf; a value that is not a number at all (`val_bpb:enabled`) is not a loss."""
    return value.lower().lstrip("+-") in ("nan", "inf", "infinity")


def _scores(fields: dict[str, str]) -> dict:
    return {"val_loss": _num(fields.get("val_loss")), "val_bpb": _num(fields.get("val_bpb"))}


# A pass over the artifact: a final line's first word (its name), then val_loss and val_bpb.
_PASS_RE = re.compile(r"^(final_\w+|legal_ttt\w*|quantized\w*)$")
_NOT_SCORE = {"final_roundtrip_plain"}  # ngpt's quantization-gap pass
_STEP_RE = re.compile(r"^step:(\d+)/(\d+)\s")
_APRIL_STEP_RE = re.compile(r"^(\d+)/(\d+) (train_loss|val_loss): ")
_BYTES_RE = re.compile(r"^(Code size|Serialized model|Total submission size)(?: \(([a-z]+)\)| (\S+))?: (\d+) bytes")
_GPU_RE = re.compile(r"^\|\s+\d+\s+(NVIDIA [^|]*?)\s{2,}\S+\s+\|")
_NGPT_MARKS = ("run_id:", "hparam ", "code_bytes:", "submission_bytes ", "peak_memory ", "final_roundtrip",
               "calibration method:", "eval_phase_time:")  # lines no official script prints
# this project's header lines `key:value ...` whose first key is one of these; value converters per key.
_HEADER = {"run_id": str, "python": str, "torch": str, "world_size": _int, "grad_accum_steps": _int,
           "code_bytes": _int, "code_bytes_plain": _int, "model_params": _int, "quant_gap_bpb": _num, "eval_phase_time": _num,
           "ttt_warmup_time": _num, "eval_warmup_time": _num, "eval_phase_compiles": _int,
           "train_phase_compiles": _int, "artifact_load_time": _num}
# header keys stored under another name (times in ms)
_RENAMED = {"eval_phase_time": "eval_phase_time_ms", "ttt_warmup_time": "warmup_time_ms", "eval_warmup_time": "warmup_time_ms",
            "artifact_load_time": "artifact_load_time_ms"}


def _generation(lines: list[str]) -> str | None:
    """Which generation wrote these lines (unstripped: official-april's hyperparameters are indented `run_id: ...`)."""
    if any(line == "Hyperparameters:" or _APRIL_STEP_RE.match(line) for line in lines):
        return "official-april"
    if any(line.startswith(_NGPT_MARKS) for line in lines):
        return "ngpt"
    if any(_STEP_RE.match(line) for line in lines):
        return "official-march"
    return None


_TIMESTAMP_RE = re.compile(r"^\d{9,}\.\d+ ")


def _untimestamped(lines: list[str]) -> list[str]:
    """Lines less the epoch timestamp a log piped through `ts` puts before each (2026-04-13's records)."""
    if _TIMESTAMP_RE.match(next((line for line in lines if line), "")):
        return [_TIMESTAMP_RE.sub("", line) for line in lines]
    return lines


def _new_log(path: Path, source: str | None) -> dict:
    return {
        "path": path, "format": None, "unrecognized": None, "source": source, "run_id": None, "python": None,
        "torch": None, "hardware": None, "world_size": None, "grad_accum_steps": None, "seed": None, "hparams": {},
        "code_bytes": None, "code_bytes_plain": None, "model_params": None, "train_steps": [], "val_steps": [],
        "steps": None, "train_loop_ms": None, "train_time_ms": None, "calibration_ms": None, "calibration_data": None,
        "step_avg_ms": None, "stopping_early": None, "wallclock_stop": False, "pre_quant": None,
        "roundtrip_plain": None, "passes": [], "aliases": [], "score": None, "final_roundtrip": None,
        "final_exact": None, "quant_gap_bpb": None, "eval_phase_time_ms": None, "total_eval_time_ms": None,
        "eval_time_ms": None, "eval_time_source": None, "warmup_time_ms": None, "eval_phase_compiles": None,
        "train_phase_compiles": None, "submission_bytes": None, "errors": [], "nonfinite": [], "sliding_score": None,
        "ttt_score": None, "ttt": None, "ttt_docs_unadapted": None, "export_time_ms": None,
        "artifact_load_time_ms": None, "peak_memory": {}, "gptq_fallback": [], "warmup_steps": None,
        "train_warmup_time_ms": None, "ttt_rates": None, "ttt_rates_by_chunk": [], "ttt_plan": None, "ttt_deadline": None, "ttt_tilt": None, "flash_attn_3": None,
    }


def _step_line(log: dict, line: str, f: dict) -> None:
    """`step:N/M train_loss:X train_time:Tms step_avg:Sms` (ngpt, official-march), `N/M train_loss: X train_time: Ym
    tok/s: T` and `N/M val_loss: X val_bpb: Y` (official-april: minutes, no time on validation lines)."""
    if m := _STEP_RE.match(line):
        done, total, ms = int(m.group(1)), int(m.group(2)), _num(f.get("train_time"))
    else:
        m = _APRIL_STEP_RE.match(line)
        done, total, ms = int(m.group(1)), int(m.group(2)), _minutes_ms(f.get("train_time"))
    step = {"step": done, "total": total, "train_time_ms": ms}
    if "val_bpb" in f:
        log["val_steps"].append({**step, **_scores(f)})
    else:
        log["train_steps"].append({**step, "train_loss": _num(f.get("train_loss")), "step_avg_ms": _num(f.get("step_avg"))})
    log["steps"] = done
    if ms is not None:
        log["train_loop_ms"] = ms
    if "step_avg" in f:
        log["step_avg_ms"] = _num(f.get("step_avg"))


def _pass_line(log: dict, name: str, f: dict) -> None:
    """A pass over the artifact; `<name>_exact` after the pass `<name>` gives its digits, an `_exact` line with its own
    eval_time is a pass of its own, one with neither is an alias of an earlier score (not a pass)."""
    last = log["passes"][-1] if log["passes"] else None
    if name.endswith("_exact") and last is not None and last["name"] == name.removesuffix("_exact"):
        last.update(_scores(f), exact=True)
    elif name.endswith("_exact") and "eval_time" not in f:
        log["aliases"].append(name)
    else:
        log["passes"].append({"name": name.removesuffix("_exact"), **_scores(f), "eval_time_ms": _num(f.get("eval_time")),
                              "exact": name.endswith("_exact"), "printed": _scores(f)})


def _ngpt_line(log: dict, line: str, f: dict) -> bool:
    """This project's own lines (other than steps, passes and bytes); False when the line is none of them."""
    if line.startswith("hparam "):
        name, _, value = line[len("hparam "):].partition("=")
        log["hparams"][name.strip()] = value.strip()
    elif line.startswith("calibration "):  # GPTQ's calibration reads training data: its train_time includes it
        log["calibration_ms"], log["train_time_ms"] = _num(f.get("time")), _num(f.get("train_time"))
        log["calibration_data"] = "training"
    elif line.startswith("hardware:"):
        log["hardware"] = line[len("hardware:"):].strip()
    elif line.startswith("submission_bytes "):
        log["submission_bytes"] = {k: _int(f.get(k)) for k in ("code", "model", "total", "limit")}
    elif line.startswith("pre_quant "):
        log["pre_quant"] = _scores(f)
    elif line.startswith("ttt gain_bpb:"):
        log["ttt"] = {"gain_bpb": _num(f.get("gain_bpb")), "vs": f.get("vs"), "docs": _int(f.get("docs")),
                      "tokens": _int(f.get("tokens")), "time_ms": _num(f.get("time")),
                      "full_split_8x_s": _num(f.get("full_split_8x_this_device", "").removesuffix("s"))}
        log["ttt_docs_unadapted"] = log["ttt_docs_unadapted"] or 0
    elif line.startswith("ttt_deadline "):
        log["ttt_docs_unadapted"] = _int(f.get("docs_unadapted"))
        log["ttt_deadline"] = {"docs_unadapted": _int(f.get("docs_unadapted")), "at_s": _seconds(f.get("at")),
                               "forward_only_tokens": _int(f.get("forward_only_tokens")),
                               "longest_adapted_segment_s": _seconds(f.get("longest_adapted_segment",
                                                                           f.get("longest_adapted_batch")))}
    elif line.startswith("ttt_tilt "):
        log["ttt_tilt"] = {"order": _int(f.get("order")), "hints": _int(f.get("hints")),
                           "targets": _int(f.get("targets")), "time_ms": _num(f.get("time"))}
    elif line.startswith("ttt_rates "):  # one line per chunk the warm-up timed, TTT_CHUNK's first
        rates = {"chunk": _int(f.get("chunk")), "adapted": _num(f.get("adapted")),
                 "forward_only": _num(f.get("forward_only"))}
        log["ttt_rates_by_chunk"].append(rates)
        log["ttt_rates"] = log["ttt_rates"] or rates
    elif line.startswith("ttt_plan "):
        log["ttt_plan"] = {"chunk": _int(f.get("chunk")), "projected_s": _seconds(f.get("projected")),
                           "actual_s": _seconds(f.get("actual"))}
        log["ttt_rates"] = next((r for r in log["ttt_rates_by_chunk"] if r["chunk"] == log["ttt_plan"]["chunk"]),
                                log["ttt_rates"])
    elif line.startswith("warmup_steps:"):  # the training's compiles and warm-up steps, before its clock
        log["warmup_steps"], log["train_warmup_time_ms"] = _int(f["warmup_steps"]), _num(f.get("warmup_time"))
    elif line.startswith("flash_attn_3: "):  # the start-up check: agrees with SDPA, or falls back to it
        log["flash_attn_3"] = line[len("flash_attn_3: "):]
    elif line.startswith("world_size:"):
        log["world_size"], log["grad_accum_steps"] = _int(f.get("world_size")), _int(f.get("grad_accum_steps"))
        if log["flash_attn_3"] is None and "flash_attn_3" in f:
            log["flash_attn_3"] = "in use" if f["flash_attn_3"] == "True" else "not in use (SDPA)"
    elif line.startswith("export "):
        log["export_time_ms"] = _num(f.get("export_time"))
    elif line.startswith("peak_memory "):
        log["peak_memory"][f.get("phase", "train")] = {f"{k}_mib": _num(f.get(k)) for k in ("allocated", "reserved", "maxrss")}
    elif line.startswith("gptq_fallback:"):
        log["gptq_fallback"].append({"count": _int(f["gptq_fallback"]), "matrices": line.partition(" ")[2]})
    elif line.partition(":")[0] in _HEADER:
        for key, conv in _HEADER.items():
            if key in f:
                log[_RENAMED.get(key, key)] = conv(f[key])
    else:
        return False
    return True


def _seconds_ms(text: str) -> float:
    """'6.9' (seconds, as the records log them) -> 6900.0, rounded to the millisecond."""
    return float(round(1000 * float(text)))


def _official_line(log: dict, line: str, f: dict, state: dict) -> None:
    """The records' lines: bytes, calibration, total_eval_time, hardware and versions, header hyperparameters."""
    if m := _BYTES_RE.match(line):
        kind, qualifier, n = m.group(1), m.group(2) or m.group(3), int(m.group(4))
        sizes = state["bytes"]
        if kind == "Code size":
            sizes["plain" if qualifier in (None, "uncompressed") else "code"] = n
            if qualifier is None:
                sizes["code"] = n  # the March scripts count the plain file
        elif qualifier:  # `Serialized model: N` / `Total submission size: N` are the unquantized model's
            sizes["model" if kind == "Serialized model" else "total"] = n
    elif m := re.match(r"^GPTQ:collected \d+ Hessians in ([\d.]+)s", line):
        log["calibration_ms"], log["calibration_data"] = _seconds_ms(m.group(1)), "training"
    elif m := re.match(r"^gptq:calibrated \d+ layers in ([\d.]+)s", line):
        log["calibration_ms"], log["calibration_data"] = _seconds_ms(m.group(1)), state["calibration_data"]
    elif line.startswith("gptq:calibrating with"):
        state["calibration_data"] = "training" if "(training data)" in line else None
    elif m := re.match(r"^gptq:generated \d+ sequences in ([\d.]+)s", line):
        log["calibration_ms"], log["calibration_data"] = _seconds_ms(m.group(1)), "self-generated"
    elif line.startswith("total_eval_time:"):
        log["total_eval_time_ms"] = _seconds_ms(f["total_eval_time"].removesuffix("s"))
    elif m := _GPU_RE.match(line):
        state["gpus"].append(m.group(1))
    elif line.startswith("Running PyTorch "):
        log["torch"] = line.split()[2]
    elif line.startswith("Running Python "):
        log["python"] = line.split()[2]
    elif line.startswith("world_size:") or line.startswith("model_params:"):
        log["world_size"] = _int(f.get("world_size")) or log["world_size"]
        log["grad_accum_steps"] = _int(f.get("grad_accum_steps")) or log["grad_accum_steps"]
        log["model_params"] = _int(f.get("model_params")) or log["model_params"]
    if (state["header"] and f and all(":" in tok for tok in line.split()) and log["format"] == "official-march"
            and not line.startswith("warmup_step:")):
        log["hparams"].update(f)  # the March scripts' header: `train_seq_len:1024 iterations:20000 ...`


def _hyperparameters(lines: list[str]) -> dict[str, str]:
    """official-april's block: `Hyperparameters:` then `  key: value` lines."""
    out = {}
    if "Hyperparameters:" in lines:
        for raw in lines[lines.index("Hyperparameters:") + 1:]:
            if not raw.startswith("  "):
                break
            key, _, value = raw.strip().partition(":")
            out[key] = value.strip()
    return out


def _finish(log: dict, state: dict) -> None:
    """Everything derived once every line is read: score, times, bytes, seed, hardware."""
    passes = log["passes"]
    scored = [p for p in passes if p["name"] not in _NOT_SCORE]
    if scored and (scored[-1]["exact"] or log["format"] != "ngpt"):  # ngpt's score needs its _exact line
        log["score"] = {k: v for k, v in scored[-1].items() if k != "printed"}
        log["final_exact"] = {k: scored[-1][k] for k in ("val_loss", "val_bpb")}
    if scored:  # the last pass as its own line printed it (ngpt: 4 decimals)
        log["final_roundtrip"] = {**scored[-1]["printed"], "eval_time_ms": scored[-1]["eval_time_ms"]}
    if log["format"] == "ngpt":
        plain = [p for p in passes if p["name"] == "final_roundtrip_plain"]
        log["roundtrip_plain"] = {k: plain[-1][k] for k in ("val_loss", "val_bpb")} if plain else None
        for kind, name in (("sliding_score", "final_roundtrip"), ("ttt_score", "final_ttt_roundtrip")):
            found = [p for p in passes if p["name"] == name]
            log[kind] = {k: found[-1][k] for k in ("val_loss", "val_bpb", "eval_time_ms")} if found else None
    times = [p["eval_time_ms"] for p in passes]
    if log["total_eval_time_ms"] is not None:
        log["eval_time_ms"], log["eval_time_source"] = log["total_eval_time_ms"], "total_eval_time"
    elif log["eval_phase_time_ms"] is not None:
        log["eval_time_ms"], log["eval_time_source"] = log["eval_phase_time_ms"], "eval_phase_time"
    elif times and None not in times:
        log["eval_time_ms"] = sum(times)
        log["eval_time_source"] = (f"{passes[0]['name']}'s eval_time" if len(passes) == 1 else f"the sum of {len(passes)} "
                                   "passes: " + ", ".join(f"{p['name']} {p['eval_time_ms'] / 1000:.1f} s" for p in passes))
    if log["format"] != "ngpt":
        sizes = state["bytes"]
        log["code_bytes"], log["code_bytes_plain"] = sizes.get("code"), sizes.get("plain")
        if sizes:
            log["submission_bytes"] = {"code": sizes.get("code"), "model": sizes.get("model"),
                                       "total": sizes.get("total"), "limit": None}
        if state["gpus"]:
            names = dict.fromkeys(state["gpus"])
            log["hardware"] = "; ".join(f"{state['gpus'].count(n)}x {n}" for n in names)
        if log["format"] == "official-april":
            hp = log["hparams"]
            log["world_size"] = _int(hp.get("world_size")) or log["world_size"]
            log["grad_accum_steps"] = _int(hp.get("grad_accum_steps")) or log["grad_accum_steps"]
            log["run_id"] = hp.get("run_id")
        log["train_time_ms"] = None if log["train_loop_ms"] is None else log["train_loop_ms"] + (
            log["calibration_ms"] if log["calibration_data"] == "training" else 0.0)
        if log["step_avg_ms"] is None and log["train_loop_ms"] and log["steps"]:
            log["step_avg_ms"] = log["train_loop_ms"] / log["steps"]  # official-april logs no step_avg
    elif log["train_time_ms"] is None:
        log["train_time_ms"] = log["train_loop_ms"]
    seed = log["hparams"].get("SEED", log["hparams"].get("seed"))
    log["seed"] = _int(seed) if seed is not None else None


def parse_log(path: str | Path) -> dict:
    """Parse one train log into a dict (missing items are None / empty).

    Keys: path, format (one of GENERATIONS, None when not recognized; unrecognized then says why), source (the
    embedded script, None for a console log), run_id, python, torch, hardware, world_size, grad_accum_steps, seed,
    hparams {name: value} (ngpt: `hparam NAME=value`; official-april: the Hyperparameters block; official-march: its
    header's key:value lines), model_params, train_steps [{step, total, train_loss, train_time_ms, step_avg_ms}],
    val_steps [{step, total, val_loss, val_bpb, train_time_ms}] (official-april: the train line's time at that step,
    minute resolution, else None), steps, train_loop_ms (the wallclock stop's train_time, else the last step line's),
    wallclock_stop (True when `stopping_early: wallclock_cap` ended training), stopping_early (that line),
    calibration_ms, calibration_data ("training", "self-generated" or None), train_time_ms (train_loop_ms plus
    calibration on training data, #677; ngpt: its calibration line's train_time), step_avg_ms (the last step line's;
    official-april: train_loop_ms / steps), passes [{name, val_loss, val_bpb, eval_time_ms, exact, printed}] (every
    pass over the artifact, in order; val_loss and val_bpb in its `_exact` line's digits when it has one, printed: its
    own line's), aliases (alias score lines, not passes), score {name, val_loss, val_bpb, eval_time_ms,
    exact} (the table above), final_exact {val_loss, val_bpb} (the score's numbers), final_roundtrip {val_loss,
    val_bpb, eval_time_ms} (the last pass, as its own line printed it), eval_time_ms (the whole evaluation) and eval_time_source (which line or sum
    it is), code_bytes (the counted size as logged: ngpt's self-extracting wrapper, official-april's `Code size
    (compressed)`, official-march's plain `Code size`), code_bytes_plain (the script's file size as logged),
    submission_bytes {code, model, total, limit}, errors [lines], nonfinite [lines].
    ngpt alone: pre_quant, roundtrip_plain, quant_gap_bpb, eval_phase_time_ms, warmup_time_ms (ttt_warmup_time /
    eval_warmup_time: graphs compiled on random tokens before the evaluation clock), eval_phase_compiles (graphs
    compiled inside it: 0 when the warm-up covered every shape), train_phase_compiles (graphs compiled inside the timed
    training steps), sliding_score and ttt_score {val_loss, val_bpb, eval_time_ms} (the final_roundtrip and
    final_ttt_roundtrip passes), ttt {gain_bpb, vs, docs, tokens, time_ms, full_split_8x_s} from `ttt gain_bpb:...`,
    ttt_docs_unadapted (ttt_deadline's docs_unadapted, 0 without that line once TTT ran), export_time_ms,
    artifact_load_time_ms, peak_memory {phase: {allocated_mib, reserved_mib, maxrss_mib}} (phase train, calibration,
    eval, ttt; a line without phase: is "train"), gptq_fallback [{count, matrices}], warmup_steps and
    train_warmup_time_ms (`warmup_steps:N done ... warmup_time:Tms`: the training's compiles and warm-up steps, before
    its clock), ttt_rates {chunk, adapted, forward_only} (per rank, measured in the TTT warm-up: scored tokens/s
    adapting, window tokens/s forward only) of the chunk the plan took (else TTT_CHUNK's), ttt_rates_by_chunk [the
    same for every chunk timed], ttt_plan {chunk, projected_s, actual_s}, ttt_deadline
    {docs_unadapted, at_s, forward_only_tokens, longest_adapted_segment_s (older logs: longest_adapted_batch)}, ttt_tilt
    {order, hints, targets, time_ms} (the n-gram tilt's hints that fired, and their computation's time), flash_attn_3 (the start-up check's verdict,
    else "in use" / "not in use (SDPA)" from the world_size line). official-april alone: total_eval_time_ms.
    """
    path = Path(path)
    source, body = split_source(path.read_bytes().decode("utf-8", errors="replace"))
    log = _new_log(path, source)
    lines = _untimestamped([line.rstrip() for line in body.splitlines()])
    log["format"] = _generation(lines)
    if log["format"] is None:
        log["unrecognized"] = ("format not recognized: no line of " + ", ".join(GENERATIONS)
                               + " (step lines `step:N/M` or `N/M train_loss:`, `hparam `, `Hyperparameters:`)")
        return log
    if log["format"] == "official-april":
        log["hparams"] = _hyperparameters(lines)
    state = {"bytes": {}, "gpus": [], "calibration_data": None, "header": True}
    for raw in lines:
        line = raw.strip()
        if raw.startswith("  ") and log["format"] == "official-april":
            continue  # the Hyperparameters block, the quantizer's list and TTT's progress: read above or not needed
        f = _fields(line)
        if any(k in f and _nonfinite(f[k]) for k in LOSS_KEYS):
            log["nonfinite"].append(line)
        name = line.split(" ", 1)[0]
        if line.startswith("error:") or line.startswith("Traceback (most recent call last)"):
            log["errors"].append(line)
        elif _STEP_RE.match(line) or _APRIL_STEP_RE.match(line):
            state["header"] = False
            _step_line(log, line, f)
        elif line.startswith("stopping_early:"):
            log["stopping_early"], log["wallclock_stop"] = line, "wallclock_cap" in line
            log["steps"] = _int(f.get("step", "").partition("/")[0]) or log["steps"]
            log["train_loop_ms"] = _num(f.get("train_time")) or log["train_loop_ms"]
        elif _PASS_RE.match(name) and "val_bpb" in f and "val_loss" in f:
            _pass_line(log, name, f)
        elif log["format"] == "ngpt":
            _ngpt_line(log, line, f)
        else:
            if line.startswith("seed:"):
                log["hparams"]["seed"] = f["seed"]
            _official_line(log, line, f, state)
    _april_val_times(log)
    _finish(log, state)
    return log


def _april_val_times(log: dict) -> None:
    """official-april's validation lines carry no time: take the train line's at the same step (0 at step 0)."""
    at = {s["step"]: s["train_time_ms"] for s in log["train_steps"]}
    if log["wallclock_stop"] and log["steps"] is not None:
        at[log["steps"]] = log["train_loop_ms"]
    for s in log["val_steps"]:
        if s["train_time_ms"] is None:
            s["train_time_ms"] = 0.0 if s["step"] == 0 else at.get(s["step"])


def summary(log: dict) -> dict:
    """The numbers a reader wants of one log, JSON-ready (runlog.py's output)."""
    keys = ("format", "unrecognized", "seed", "steps", "train_loop_ms", "calibration_ms", "calibration_data",
            "train_time_ms", "wallclock_stop", "step_avg_ms", "eval_time_ms", "eval_time_source", "code_bytes",
            "code_bytes_plain", "submission_bytes", "world_size", "hardware", "torch", "hparams")
    return {"path": str(log["path"]), "score": log["score"], "source_embedded": log["source"] is not None,
            **{k: log[k] for k in keys}}


def _fmt(value, spec: str = "", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def describe(log: dict) -> str:
    """A few lines for a person: format, score, steps, times, bytes, hardware."""
    if log["format"] is None:
        return f"{log['path']}: {log['unrecognized']}"
    s, sizes = log["score"], log["submission_bytes"] or {}
    calib = (f" + calibration {log['calibration_ms'] / 1000:.3f} s on {log['calibration_data']} data"
             if log["calibration_ms"] is not None else "")
    return "\n".join([
        f"{log['path']}: {log['format']}, seed {_fmt(log['seed'])}",
        "  score: " + (f"val_loss {s['val_loss']} val_bpb {s['val_bpb']} ({s['name']})" if s else "n/a"),
        f"  steps: {_fmt(log['steps'])}, step_avg {_fmt(log['step_avg_ms'], '.2f', ' ms')}",
        f"  training: {_fmt(log['train_loop_ms'] and log['train_loop_ms'] / 1000, '.3f', ' s')}{calib}"
        + (" (stopped by the wallclock cap)" if log["wallclock_stop"] else ""),
        f"  evaluation: {_fmt(log['eval_time_ms'] and log['eval_time_ms'] / 1000, '.3f', ' s')}"
        + (f" ({log['eval_time_source']})" if log["eval_time_source"] else ""),
        f"  bytes: code {_fmt(sizes.get('code'), ',')} (plain {_fmt(log['code_bytes_plain'], ',')}), "
        f"model {_fmt(sizes.get('model'), ',')}, total {_fmt(sizes.get('total'), ',')}",
        f"  world_size {_fmt(log['world_size'])}, hardware {log['hardware'] or 'not logged'}, "
        f"torch {log['torch'] or 'not logged'}, source {'embedded' if log['source'] is not None else 'not in the log'}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read train logs of every generation (this project's and the "
                                     "challenge records'): score, steps, times, bytes, hardware.")
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="train logs")
    parser.add_argument("--json", action="store_true", help="one JSON list of the logs' numbers instead of text")
    args = parser.parse_args(argv)
    try:
        logs = [parse_log(p) for p in args.logs]
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([summary(log) for log in logs], indent=2))
    else:
        print("\n".join(describe(log) for log in logs))
    unknown = [str(log["path"]) for log in logs if log["format"] is None]
    if unknown:
        print(f"error: format not recognized: {', '.join(unknown)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
