"""Parse the train log that train_gpt.py writes (rank 0, logs/<RUN_ID>.txt).

The log holds the script's source verbatim (written with print(), so one newline
follows it), a line of 100 '=' characters, then `key:value` lines. Every tool that
reads logs (check, record, plot) goes through parse_log() here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

SEPARATOR = "=" * 100
_SEP_RE = re.compile("^" + SEPARATOR + "$", re.MULTILINE)
LOSS_KEYS = ("train_loss", "val_loss", "val_bpb")


def split_source(text: str) -> tuple[str | None, str]:
    """Return (embedded source, text after the separator line); source is None without one."""
    m = _SEP_RE.search(text)
    if m is None:
        return None, text
    source = text[: m.start()]
    # print() added one newline after the source; it is not part of the script.
    return source.removesuffix("\n"), text[m.end():]


def _fields(line: str) -> dict[str, str]:
    """`a:1 b:2ms` -> {"a": "1", "b": "2ms"}; tokens without ':' are skipped."""
    return dict(tok.split(":", 1) for tok in line.split() if ":" in tok)


def _num(value: str | None) -> float | None:
    """Float of a value such as '4.03', '812ms', '1234MiB', 'nan'; None when absent or unparsable."""
    try:
        return float(re.sub(r"(ms|MiB)$", "", value))
    except (TypeError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    number = _num(value)
    return int(number) if number is not None and number.is_integer() else None


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _scores(fields: dict[str, str]) -> dict:
    return {"val_loss": _num(fields.get("val_loss")), "val_bpb": _num(fields.get("val_bpb"))}


_FINAL_RE = re.compile(r"^final_((?:[A-Za-z0-9]+_)*)roundtrip(_exact)?\s")
# Header lines `key:value ...` whose first key is one of these; value converters per key.
_HEADER = {"run_id": str, "python": str, "torch": str, "world_size": _int, "grad_accum_steps": _int,
           "code_bytes": _int, "code_bytes_plain": _int, "model_params": _int, "quant_gap_bpb": _num, "eval_phase_time": _num,
           "ttt_warmup_time": _num, "eval_warmup_time": _num, "eval_phase_compiles": _int,
           "train_phase_compiles": _int, "artifact_load_time": _num}
# header keys stored under another name (times in ms)
_RENAMED = {"eval_phase_time": "eval_phase_time_ms", "ttt_warmup_time": "warmup_time_ms", "eval_warmup_time": "warmup_time_ms",
            "artifact_load_time": "artifact_load_time_ms"}


def parse_log(path: str | Path) -> dict:
    """Parse one train log into a dict (missing items are None / empty).

    Keys: path, source, run_id, python, torch, hardware, world_size, grad_accum_steps,
    hparams {NAME: value}, code_bytes, model_params, train_steps [{step, total,
    train_loss, train_time_ms, step_avg_ms}], val_steps [{step, total, val_loss, val_bpb,
    train_time_ms}], steps, train_time_ms (from the last step line, or the calibration line after it, which counts
    GPTQ's calibration as training), calibration_ms, step_avg_ms (from the last step line),
    stopping_early, pre_quant, roundtrip_plain, code_bytes_plain (the script's file size; code_bytes is the
    counted size of its self-extracting wrapper), warmup_time_ms (ttt_warmup_time / eval_warmup_time: graphs compiled
    on random tokens before the evaluation clock), eval_phase_compiles (graphs compiled inside it: 0 when the warm-up
    covered every shape), train_phase_compiles (graphs compiled inside the timed training steps: 0 when the warm-up
    compiled both of depth recurrence's graphs), final_roundtrip {val_loss, val_bpb,
    eval_time_ms}, final_exact {val_loss, val_bpb}, quant_gap_bpb, eval_phase_time_ms,
    eval_time_ms (eval_phase_time, else the sum of the eval_time of every final_..._roundtrip line: the plain pass,
    the sliding window if it ran, and with TTT the TTT score),
    submission_bytes {code, model, total, limit}, errors [lines], nonfinite [lines];
    sliding_score and ttt_score {val_loss, val_bpb, eval_time_ms}: the final_roundtrip (sliding window) and
    final_ttt_roundtrip lines alone (their _exact lines' digits when logged), where final_roundtrip / final_exact
    hold whichever came last (with TTT, its score); ttt {gain_bpb, vs, docs, tokens, time_ms, full_split_8x_s} from
    `ttt gain_bpb:...` (full_split_8x_s: the TTT pass on the full split on 8 devices like this one),
    ttt_docs_unadapted (ttt_deadline's docs_unadapted, 0 without that line once TTT ran), export_time_ms (the export
    line's export_time), artifact_load_time_ms, peak_memory {phase: {allocated_mib, reserved_mib, maxrss_mib}}
    (phase train, calibration, eval, ttt; a line without phase: is "train"), gptq_fallback [{count, matrices}] (one
    per `gptq_fallback:N name:how,...` line).
    """
    path = Path(path)
    source, body = split_source(path.read_bytes().decode("utf-8", errors="replace"))
    log: dict = {
        "path": path, "source": source, "run_id": None, "python": None, "torch": None,
        "hardware": None, "world_size": None, "grad_accum_steps": None, "hparams": {},
        "code_bytes": None, "code_bytes_plain": None, "model_params": None, "train_steps": [], "val_steps": [],
        "steps": None, "train_time_ms": None, "calibration_ms": None, "step_avg_ms": None, "stopping_early": None,
        "pre_quant": None, "roundtrip_plain": None, "final_roundtrip": None, "final_exact": None,
        "quant_gap_bpb": None, "eval_phase_time_ms": None, "warmup_time_ms": None, "eval_phase_compiles": None,
        "train_phase_compiles": None, "submission_bytes": None,
        "errors": [], "nonfinite": [], "sliding_score": None, "ttt_score": None, "ttt": None,
        "ttt_docs_unadapted": None, "export_time_ms": None, "artifact_load_time_ms": None, "peak_memory": {},
        "gptq_fallback": [],
    }
    final_ms = []
    for line in body.splitlines():
        line = line.strip()
        f = _fields(line)
        if any(k in f and not finite(_num(f[k])) for k in LOSS_KEYS):
            log["nonfinite"].append(line)
        if line.startswith("error:"):
            log["errors"].append(line)
        elif line.startswith("hparam "):
            name, _, value = line[len("hparam "):].partition("=")
            log["hparams"][name.strip()] = value.strip()
        elif line.startswith("step:"):
            done, _, total = f["step"].partition("/")
            step = {"step": _int(done), "total": _int(total), "train_time_ms": _num(f.get("train_time"))}
            if "val_bpb" in f:
                log["val_steps"].append({**step, **_scores(f)})
            else:
                log["train_steps"].append({**step, "train_loss": _num(f.get("train_loss")),
                                           "step_avg_ms": _num(f.get("step_avg"))})
            log["steps"], log["train_time_ms"] = step["step"], step["train_time_ms"]
            log["step_avg_ms"] = _num(f.get("step_avg"))
        elif line.startswith("calibration "):  # GPTQ's calibration reads training data: its train_time includes it
            log["calibration_ms"], log["train_time_ms"] = _num(f.get("time")), _num(f.get("train_time"))
        elif line.startswith("stopping_early:"):
            log["stopping_early"] = line
        elif line.startswith("hardware:"):
            log["hardware"] = line[len("hardware:"):].strip()
        elif line.startswith("submission_bytes "):
            log["submission_bytes"] = {k: _int(f.get(k)) for k in ("code", "model", "total", "limit")}
        elif line.startswith("pre_quant "):
            log["pre_quant"] = _scores(f)
        elif line.startswith("final_roundtrip_plain "):  # the quantization gap's pass, before the score's
            log["roundtrip_plain"] = _scores(f)
            if "eval_time" in f:
                final_ms.append(_num(f["eval_time"]))
        elif m := _FINAL_RE.match(line):
            kind = {"": "sliding_score", "ttt_": "ttt_score"}.get(m.group(1))
            if m.group(2):
                log["final_exact"] = _scores(f)
                if kind and log[kind]:
                    log[kind].update(_scores(f))
            else:
                log["final_roundtrip"] = {**_scores(f), "eval_time_ms": _num(f.get("eval_time"))}
                final_ms.append(_num(f.get("eval_time")))
                if kind:
                    log[kind] = dict(log["final_roundtrip"])
        elif line.startswith("ttt gain_bpb:"):
            log["ttt"] = {"gain_bpb": _num(f.get("gain_bpb")), "vs": f.get("vs"), "docs": _int(f.get("docs")),
                          "tokens": _int(f.get("tokens")), "time_ms": _num(f.get("time")),
                          "full_split_8x_s": _num(f.get("full_split_8x_this_device", "").removesuffix("s"))}
            log["ttt_docs_unadapted"] = log["ttt_docs_unadapted"] or 0
        elif line.startswith("ttt_deadline "):
            log["ttt_docs_unadapted"] = _int(f.get("docs_unadapted"))
        elif line.startswith("export "):
            log["export_time_ms"] = _num(f.get("export_time"))
        elif line.startswith("peak_memory "):
            log["peak_memory"][f.get("phase", "train")] = {f"{k}_mib": _num(f.get(k))
                                                             for k in ("allocated", "reserved", "maxrss")}
        elif line.startswith("gptq_fallback:"):
            log["gptq_fallback"].append({"count": _int(f["gptq_fallback"]), "matrices": line.partition(" ")[2]})
        elif line.partition(":")[0] in _HEADER:
            for key, conv in _HEADER.items():
                if key in f:
                    log[_RENAMED.get(key, key)] = conv(f[key])
    log["eval_time_ms"] = log["eval_phase_time_ms"] if log["eval_phase_time_ms"] is not None else (
        None if not final_ms or None in final_ms else sum(final_ms))
    return log
