"""Check a train log, or a record folder, against the challenge rules, as the organizers check a submission.

    python tools/check.py logs/<RUN_ID>.txt [--script train_gpt.py] [--ptz final_model.ptz]
    python tools/check.py records/track_10min_16mb/<folder>/

Prints a table (rule | value | limit | status) and exits 1 listing every FAIL, 0 when none, 2 when the input cannot be
read or its format is not recognized. Status: PASS, FAIL, INFO (shown, not a rule), N/A (not checkable here: what the
folder or log cannot show, e.g. a console log holds no source and names no hardware). Import check_log() and
check_folder() to reuse the rules.

The checker never runs the code it checks: a script's code bytes are counted by this file's own code, per the
convention the script uses (found by reading its syntax tree, not by importing or calling it):

| convention | whose | counted size |
| --- | --- | --- |
| `ngpt-wrapper` | this project's train_gpt.py (defines `minified` and `code_wrapper`) | a two-line program: the script's AST without docstrings (ast.unparse), raw LZMA2 (preset 9 extreme), base85 |
| `pyminify+lzma+base85` | #2135 and its family (`_compressed_code_size` calls `pyminify` then `lzma.compress`) | python-minifier with the script's own flags, lzma (xz, preset 6), base85, in `import lzma as L,base64 as B` / `exec(...)` |
| `pyminify+brotli+base85` | #1855 and its family (`pyminify` then `brotli.compress(quality=11)`) | the same with brotli at the script's quality, in `import brotli as B,base64 as b` / `exec(...)` |
| `plain` | the March records and any other script | the file's size |

Time rules, and the reading of them applied (each its own row, with the number and the margin):
- training time: the README's "10 minutes" (600 s; --max-train-s). The official scripts read the clock once per step,
  before the GPU has finished that step, and stop after the step that crosses the cap, so a run stopped by that check
  (`stopping_early: wallclock_cap`) ends less than two steps past it: accepted records of March end 8-137 ms past 600 s.
  Reading applied: PASS when at most 600 s, or when the wallclock check stopped it less than 2 x step_avg past 600 s
  (the row says so and shows the overshoot); --strict-cap applies 600 s to the millisecond.
- training + calibration (#677): calibration that reads training data (GPTQ's Hessians) is training (organizers' ruling,
  issue #677): training time plus that calibration must be at most 600 s, to the millisecond. Calibration on tokens
  the model generates itself is shown, not counted.
- evaluation time: the whole evaluation (runlog's eval_time_ms: the scripts' own total, else the sum of every pass over
  the artifact) at most 600 s (--max-eval-s).
"""

from __future__ import annotations

import argparse
import ast
import base64
import decimal
import importlib.metadata
import inspect
import json
import lzma
import math
import platform
import re
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from scipy import stats

if __package__ in (None, ""):  # run as `python tools/check.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.runlog import finite, parse_log

LIMIT_BYTES = 16_000_000
MAX_TRAIN_S = 600.0
MAX_EVAL_S = 600.0
# A recount may differ from the logged count by the minifier's or compressor's version alone, when the script is the
# logged one: measured on the real records with python-minifier 3.4.0, -10 of 37,155 bytes (#2135), -15 of 27,610
# (2026-04-14), -8 of 28,599 (2026-04-13). More than this share is not a version's drift.
VERSION_DRIFT = 0.005
STOP_STEPS = 2  # how many steps past the cap the official scripts' wallclock stop can run (module docstring)
THRESHOLD_NATS = 0.005  # a record beats the best by this much...
ALPHA = 0.01  # ...at p below this (README, "Submission Process")
REQUIRED_FILES = ("README.md", "submission.json", "train_gpt.py")


class Row(NamedTuple):
    rule: str
    value: str
    limit: str
    status: str  # PASS, FAIL, INFO or N/A

    def describe(self) -> str:
        return f"{self.rule}: {self.value} (limit: {self.limit})"


def _row(rule: str, ok: bool, value, limit="-") -> Row:
    return Row(rule, str(value), str(limit), "PASS" if ok else "FAIL")


def is_8xh100(log: dict) -> bool:
    """True when the log's hardware line names 8 H100s and world_size (if logged) is 8."""
    return bool(re.match(r"8x\b.*H100", log["hardware"] or "")) and log["world_size"] in (None, 8)


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ------------------------------------------------------------------ code bytes, counted without running the script

class CodeCount(NamedTuple):
    convention: str
    counted: int | None  # None: the convention's tool is missing here (reason in `tools`)
    plain: int
    tools: str  # the tools and versions that made the count

    def text(self) -> str:
        return f"{self.convention}, {self.tools}"


LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
NGPT_WRAPPER = ("import lzma,base64\nexec(lzma.decompress(base64.b85decode('", "'),lzma.FORMAT_RAW,filters=[{'id':lzma.FILTER_LZMA2}]))\n")
PYMINIFY_WRAPPERS = {"lzma": (b'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("', b'")))\n'),
                     "brotli": (b'import brotli as B,base64 as b\nexec(B.decompress(b.b85decode("', b'")))\n')}


def _without_docstrings(source: str) -> str:
    """This project's `minified`: the AST without the docstrings of the module, classes and functions, unparsed."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def _defines_ngpt_wrapper(tree: ast.Module) -> bool:
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return {"minified", "code_wrapper"} <= names


def counted_code_bytes(source: str) -> int | None:
    """Code bytes of this project's convention (`ngpt-wrapper`, see the module docstring), computed here from the
    script's text; None for a script that does not use it. Nothing of the script runs."""
    if not _defines_ngpt_wrapper(ast.parse(source)):
        return None
    packed = base64.b85encode(lzma.compress(_without_docstrings(source).encode(), lzma.FORMAT_RAW,
                                            filters=LZMA_FILTERS)).decode()
    return len((NGPT_WRAPPER[0] + packed + NGPT_WRAPPER[1]).encode("utf-8"))


def _names_pyminify(node: ast.AST) -> bool:
    """`"pyminify"`, or a variable named for it (`pyminify_exe = shutil.which("pyminify")`, 2026-04-13's record)."""
    return (isinstance(node, ast.Constant) and node.value == "pyminify"
            or isinstance(node, ast.Name) and "pyminify" in node.id)


def _pyminify_call(tree: ast.Module) -> tuple[list[str], str, dict] | None:
    """(pyminify flags, compressor, its constant keyword arguments) of a function that runs `pyminify` and compresses
    the result with brotli or lzma; None when the script has none. Read from the syntax tree only."""
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        flags = None
        for node in ast.walk(func):
            if isinstance(node, ast.List) and node.elts and _names_pyminify(node.elts[0]):
                flags = [e.value for e in node.elts[1:] if isinstance(e, ast.Constant) and e.value != "-"]
        if flags is None:
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "compress" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in PYMINIFY_WRAPPERS:
                kwargs = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                return flags, node.func.value.id, kwargs
    return None


def _pyminify_options(flags: list[str]) -> dict:
    """pyminify's command-line flags as python_minifier.minify() keyword arguments (`--no-rename-locals` ->
    rename_locals=False, `--remove-asserts` -> remove_asserts=True); ValueError for a flag with no boolean twin."""
    import python_minifier
    params = inspect.signature(python_minifier.minify).parameters
    options = {}
    for flag in flags:
        name = flag.removeprefix("--").replace("-", "_")
        value = not name.startswith("no_")
        name = name.removeprefix("no_")
        if name not in params or not isinstance(params[name].default, bool):
            raise ValueError(f"pyminify flag {flag} has no boolean option in python-minifier")
        options[name] = value
    return options


def count_code(script: Path) -> CodeCount:
    """The script's code bytes as its own convention counts them (module docstring), with the tools that counted."""
    raw = script.read_bytes()
    plain = len(raw)
    try:
        tree = ast.parse(raw)
    except (SyntaxError, ValueError):
        return CodeCount("plain", plain, plain, "the file's size (it is not Python this interpreter parses)")
    if _defines_ngpt_wrapper(tree):
        counted = counted_code_bytes(raw.decode("utf-8"))
        return CodeCount("ngpt-wrapper", counted, plain,
                         f"ast.unparse of Python {platform.python_version()}, liblzma via lzma")
    found = _pyminify_call(tree)
    if found is None:
        return CodeCount("plain", plain, plain, "the file's size")
    flags, compressor, kwargs = found
    convention = f"pyminify+{compressor}+base85"
    try:
        import python_minifier
        options = _pyminify_options(flags)
        minified = python_minifier.minify(raw.decode("utf-8"), **options).encode("utf-8")
        if compressor == "brotli":
            import brotli
            packed = brotli.compress(minified, quality=int(kwargs.get("quality", 11)))
            version = f"brotli {importlib.metadata.version('brotli')} quality {kwargs.get('quality', 11)}"
        else:
            packed = lzma.compress(minified, preset=int(kwargs.get("preset", 6)))
            version = f"lzma preset {kwargs.get('preset', 6)}"
    except ImportError as exc:
        return CodeCount(convention, None, plain, f"not checkable here: {exc.name} is not installed")
    except ValueError as exc:
        return CodeCount(convention, None, plain, f"not checkable here: {exc}")
    head, tail = PYMINIFY_WRAPPERS[compressor]
    tools = f"python-minifier {importlib.metadata.version('python-minifier')} {' '.join(flags)}, {version}"
    return CodeCount(convention, len(head + base64.b85encode(packed) + tail), plain, tools)


# ------------------------------------------------------------------ one log

def _ms_to_s(ms: float) -> str:
    return f"{ms / 1000:.3f} s"


def _missing(log: dict, rule: str, what: str, limit) -> Row:
    """A number the log does not give: FAIL for this project's log (its script always prints it: the run broke),
    N/A for a record's (its script may print it in a line no reader knows)."""
    if log["format"] == "ngpt":
        return _row(rule, False, "missing", limit)
    return Row(rule, f"not checkable here: the log gives no {what} in a line tools/runlog.py reads", str(limit), "N/A")


def _margin_s(spare_ms: float) -> str:
    return f"{spare_ms / 1000:.3f} s to spare" if spare_ms >= 0 else f"{-spare_ms / 1000:.3f} s over"


def _training_rows(log: dict, cap_s: float, strict: bool) -> list[Row]:
    """The 600 s cap on training, then training + calibration on training data (#677); module docstring."""
    loop, cap_ms, step = log["train_loop_ms"], cap_s * 1000, log["step_avg_ms"]
    limit = f"{cap_s:g} s (README)" + ("" if strict else f"; a wallclock stop may end < {STOP_STEPS} steps past it")
    if not finite(loop):
        rows = [_missing(log, "training time", "training time", limit)]
    elif loop <= cap_ms:
        rows = [_row("training time", True, f"{_ms_to_s(loop)} ({_margin_s(cap_ms - loop)})", limit)]
    else:
        over = loop - cap_ms
        allowed = log["wallclock_stop"] and not strict and finite(step) and over < STOP_STEPS * step
        how = (f"stopped by the wallclock check, {STOP_STEPS} steps = {STOP_STEPS * step:.0f} ms" if log["wallclock_stop"]
               and finite(step) else "not stopped by a wallclock check")
        rows = [_row("training time", allowed, f"{_ms_to_s(loop)}: {over:.0f} ms past the cap ({how})", limit)]
    calib, rule = log["calibration_ms"], "training + calibration (#677)"
    if log["calibration_data"] == "training" and finite(calib) and finite(log["train_time_ms"]):
        total = log["train_time_ms"]
        rows.append(_row(rule, total <= cap_ms, f"{_ms_to_s(total)} = training + {_ms_to_s(calib)} of calibration on "
                         f"training data ({_margin_s(cap_ms - total)})", f"{cap_s:g} s"))
    elif finite(calib):
        rows.append(Row(rule, f"{_ms_to_s(calib)} of calibration on {log['calibration_data'] or 'unnamed'} tokens, "
                        "not training data: not counted", f"{cap_s:g} s", "INFO"))
    else:
        rows.append(Row(rule, "no calibration logged", f"{cap_s:g} s", "INFO"))
    return rows


def _bytes_rows(log: dict, script: Path | None, ptz: Path | None, limit: int) -> list[Row]:
    """artifact bytes (recounted from the files given), code counting, bytes match log."""
    logged = log["submission_bytes"] or {}
    code_count = count_code(Path(script)) if script else None
    code = logged.get("code") if code_count is None else code_count.counted
    model = Path(ptz).stat().st_size if ptz else logged.get("model")
    if script or ptz:
        total = None if code is None or model is None else code + model
    else:
        total = logged.get("total")
    over = [t for t in (total, logged.get("total")) if t is not None and t > limit]
    if total is None:
        rows = [_missing(log, "artifact bytes", "model or total size", limit)]
    else:
        value = f"{total} ({limit - total:,} to spare)" if total <= limit else f"{total} ({total - limit:,} over)"
        if logged.get("total") in over and total != logged["total"]:
            value += f"; the log's own total {logged['total']} is over"
        rows = [_row("artifact bytes", not over, value, limit)]
    if code_count is not None:
        c = code_count
        if c.counted is None:
            rows.append(Row("code counting", f"{c.convention}: {c.tools}", "-", "N/A"))
        else:
            fits = model is not None and c.plain + model <= limit
            rows.append(Row("code counting", f"{c.counted} bytes as the records count it ({c.text()}); logged "
                            f"{log['code_bytes']}; plain {c.plain}" + ("" if model is None or c.convention == "plain" else
                            f": code + model {c.plain + model} " + ("also fits" if fits else "is over the limit, only "
                            "the wrapper's count passes")), "-", "INFO"))
    if script or ptz:
        same = total is not None and total == logged.get("total")
        plain_same = code_count is None or code_count.plain == log["code_bytes_plain"]
        drift = (code_count is not None and code_count.counted is not None and plain_same and log["code_bytes"]
                 and model == logged.get("model") and code_count.convention != "plain"
                 and abs(code_count.counted - log["code_bytes"]) <= VERSION_DRIFT * code_count.counted)
        note = ""
        if not same and drift:
            note = (f" (the script is the logged one, {code_count.plain} plain bytes; the count differs by "
                    f"{code_count.counted - (log['code_bytes'] or 0):+d}: the tools here, {code_count.tools}, are not "
                    "those that ran)")
        elif not same and code_count is not None and not plain_same:
            note = f" (the script has {code_count.plain} bytes; the log counted a {log['code_bytes_plain']}-byte one)"
        elif not same and code_count is not None and code_count.counted is not None:
            note = (f" (code counted {code_count.counted} here, {log['code_bytes']} in the log: more than a tool "
                    f"version's drift of {VERSION_DRIFT:.1%})")
        rows.append(_row("bytes match log", same or drift, f"{total} recomputed, {logged.get('total')} logged" + note,
                         "equal"))
    return rows


def check_log(log: dict | str | Path, script: str | Path | None = None, ptz: str | Path | None = None, *,
              limit: int = LIMIT_BYTES, max_train_s: float = MAX_TRAIN_S, max_eval_s: float = MAX_EVAL_S,
              require_8xh100: bool = False, strict_cap: bool = False) -> list[Row]:
    """Check a log (a path or a parse_log() dict); returns one Row per rule.

    With script and/or ptz the artifact size is recomputed from those files (the other part from the log) and must
    equal the log's total; with script the source embedded in the log must be byte-identical to it (not checkable on a
    console log, which holds none). A log of no known format gives one N/A row saying so.
    """
    if not isinstance(log, dict):
        log = parse_log(log)
    if log["format"] is None:
        return [Row("log format", log["unrecognized"], "-", "N/A")]
    rows = _bytes_rows(log, script, ptz, limit) + _training_rows(log, max_train_s, strict_cap)
    ms = log["eval_time_ms"]
    if ms is None:
        rows.append(_missing(log, "evaluation time", "evaluation time of every pass", f"{max_eval_s:g} s"))
    else:
        rows.append(_row("evaluation time", finite(ms) and ms <= max_eval_s * 1000, f"{_ms_to_s(ms)} "
                         f"({log['eval_time_source']}; {_margin_s(max_eval_s * 1000 - ms)})", f"{max_eval_s:g} s"))
    if log.get("train_phase_compiles") is not None:
        n = log["train_phase_compiles"]
        rows.append(Row("training compiles", f"{n} graph(s) compiled inside the timed training steps"
                        + (" (WARMUP_STEPS missed one: its compile time was training time)" if n else ""),
                        "0 (the warm-up compiles each)", "INFO"))
    if log.get("warmup_time_ms") is not None:
        compiles = log.get("eval_phase_compiles")
        rows.append(Row("evaluation warm-up", f"{log['warmup_time_ms'] / 1000:.3f} s on random tokens before the "
                        f"evaluation clock; {compiles} graph(s) compiled inside it"
                        + (" (a shape the warm-up missed: its compile time counts)" if compiles else ""),
                        "outside the 600 s (#2135)", "INFO"))
    score = log["score"]
    rows.append(_row("final score", score is not None and finite(score["val_loss"]) and finite(score["val_bpb"]),
                     "missing" if score is None else
                     f"val_loss {score['val_loss']} val_bpb {score['val_bpb']} ({score['name']})", "finite"))
    if script:
        want, got = Path(script).read_bytes(), log["source"]
        if got is None:
            rows.append(Row("source matches script", "not checkable here: the log holds no source (a console log)",
                            Path(script).name, "N/A"))
        else:
            got = got.encode("utf-8")
            rows.append(_row("source matches script", got == want, "identical" if got == want else
                             f"differs at byte {_first_difference(got, want)}", Path(script).name))
    bad = log["nonfinite"]
    rows.append(_row("finite losses", not bad, f"{len(bad)} non-finite line(s)" + (f", first: {bad[0]}" if bad else ""),
                     "0"))
    rows.append(_row("no error line", not log["errors"], log["errors"][0] if log["errors"] else "none", "none"))
    hardware = f"{log['hardware']} (world_size {log['world_size']})"
    if log["hardware"] is None:
        rows.append(Row("8x H100", f"not checkable here: the log names no hardware (world_size {log['world_size']})",
                        "required" if require_8xh100 else "not required", "N/A"))
    else:
        status = ("PASS" if is_8xh100(log) else "FAIL") if require_8xh100 else "INFO"
        rows.append(Row("8x H100", hardware, "required" if require_8xh100 else "not required", status))
    return rows


# ------------------------------------------------------------------ significance (record.py shares it)

def significance(bpbs: list[float], losses: list[float], best: float | None = None,
                 best_bpbs: list[float] | None = None) -> dict:
    """One-sided test that the mean val_bpb beats the best by THRESHOLD_NATS (converted to bpb).

    The threshold in bpb is THRESHOLD_NATS times the mean val_bpb/val_loss ratio of our runs.
    With best_bpbs (another submission's seeds) Welch's t-test against them shifted down by the
    threshold; else a one-sample t-test against best - threshold. p_value is None when the test
    cannot be run.
    """
    ratio = statistics.mean(b / l for b, l in zip(bpbs, losses))
    threshold = THRESHOLD_NATS * ratio
    if best_bpbs is not None:
        best, test = statistics.mean(best_bpbs), "Welch's t-test (one-sided, unequal variances)"
    else:
        test = "one-sample t-test (one-sided)"
    out = {"test": test, "best_val_bpb": best, "threshold_nats": THRESHOLD_NATS, "threshold_bpb": threshold,
           "target_val_bpb": None if best is None else best - threshold, "p_value": None, "beats_best": None,
           "note": None}
    if len(bpbs) < 2 or (best_bpbs is not None and len(best_bpbs) < 2):
        out["note"] = "fewer than 2 seeds on a side: the significance test cannot be run"
    elif best is None:
        out["note"] = "no best score given: significance not tested"
    else:
        if best_bpbs is None:
            p = stats.ttest_1samp(bpbs, best - threshold, alternative="less").pvalue
        else:
            shifted = [b - threshold for b in best_bpbs]
            p = stats.ttest_ind(bpbs, shifted, equal_var=False, alternative="less").pvalue
        if math.isfinite(p):
            out.update(p_value=float(p), beats_best=bool(p < ALPHA))
        else:
            out["note"] = "zero variance across seeds: the t-test is undefined"
    return out


# ------------------------------------------------------------------ a record folder

def folder_logs(folder: Path) -> list[Path]:
    """The folder's log files: *.log and *.txt but requirements.txt, in the folder or a logs/ folder in it."""
    return sorted(p for where in (folder, folder / "logs") if where.is_dir() for p in where.iterdir()
                  if p.is_file() and p.suffix in (".log", ".txt") and p.name != "requirements.txt")


def _agrees(written, computed) -> bool:
    """A submission.json number (parsed as Decimal) equals the logs' to the last digit it was written with, within one
    unit of that digit: records write means of rounded numbers (#1394: 1.08563 for 1.0856248) and round byte means."""
    if computed is None or isinstance(written, bool) or not isinstance(written, (int, decimal.Decimal)):
        return False
    unit = 1.0 if isinstance(written, int) else 10.0 ** written.as_tuple().exponent
    if float(computed).is_integer() and float(written).is_integer():
        return float(written) == computed  # byte counts, steps: exact
    return abs(float(written) - computed) <= unit * (1 + 1e-9)


# per-seed fields of submission.json and the log value each must equal
SEED_FIELDS = {"val_bpb": lambda g: g["score"]["val_bpb"], "val_loss": lambda g: g["score"]["val_loss"],
               "artifact_bytes": lambda g: (g["submission_bytes"] or {}).get("total"),
               "bytes_total": lambda g: (g["submission_bytes"] or {}).get("total"),
               "steps": lambda g: g["steps"], "step_avg_ms": lambda g: g["step_avg_ms"],
               "eval_time_s": lambda g: g["eval_time_ms"] and g["eval_time_ms"] / 1000,
               "train_wallclock_ms": lambda g: g["train_loop_ms"]}


def _mean(values):
    return statistics.mean(values) if values and None not in values else None


def _max(values):
    return max(values) if values and None not in values else None


def _folder_fields(logs: list[dict]) -> dict[str, dict]:
    """submission.json's fields over all seeds, by row, and what each must equal (computed from the seeds' logs)."""
    get = {k: [SEED_FIELDS[k](g) for g in logs] for k in SEED_FIELDS}
    return {"score": {"val_bpb": _mean(get["val_bpb"]), "val_loss": _mean(get["val_loss"])},
            "bytes": {"bytes_total": _max(get["bytes_total"]), "artifact_bytes_max": _max(get["bytes_total"]),
                      "artifact_bytes_mean": _mean(get["bytes_total"])},
            "steps and times": {"train_steps_mean": _mean(get["steps"]), "step_avg_ms_mean": _mean(get["step_avg_ms"]),
                                "eval_time_s_mean": _mean(get["eval_time_s"]), "eval_time_s_max": _max(get["eval_time_s"]),
                                "train_wallclock_ms_mean": _mean(get["train_wallclock_ms"]),
                                "train_wallclock_ms_max": _max(get["train_wallclock_ms"])}}


def _per_seed(sub: dict) -> dict[str, dict]:
    """submission.json's results per seed: `seed_results`, or `seeds` written as a dict of them."""
    results = sub.get("seed_results") or (sub.get("seeds") if isinstance(sub.get("seeds"), dict) else {})
    return {str(k): v for k, v in results.items() if isinstance(v, dict)}


def _misses(want: dict, log: dict) -> list[str]:
    return [f"{k} {want[k]} vs {SEED_FIELDS[k](log)}" for k in want if k in SEED_FIELDS
            and not _agrees(want[k], SEED_FIELDS[k](log))]


def _submission_runs(sub: dict, logs: list[dict]) -> tuple[list[dict], str, list[str]]:
    """The logs submission.json speaks of, how they were found, and its per-seed numbers that differ from them.

    One log per seed (a folder may hold reruns: the one the per-seed numbers match, else the last by name): the seeds
    of `seed_results` (or `seeds`), else every seed; when the json's val_bpb is not those logs' mean but one log's
    score, that log alone (early records reported one run and added the others as evidence)."""
    by_seed: dict[str, list[dict]] = {}
    for log in logs:
        by_seed.setdefault(str(log["seed"]), []).append(log)
    per_seed, bad = _per_seed(sub), []
    listed = [str(s) for s in sub.get("seeds", [])] if isinstance(sub.get("seeds"), list) else list(per_seed)
    chosen = []
    for seed in listed or list(by_seed):
        candidates = by_seed.get(seed)
        if not candidates:
            bad.append(f"seed {seed}: no log")
            continue
        want = per_seed.get(seed) or {k: sub[k] for k in ("val_bpb",) if k in sub}
        best = min(reversed(candidates), key=lambda g: (not _agrees(want.get("val_bpb"), g["score"]["val_bpb"]),
                                                         len(_misses(want, g))))
        chosen.append(best)
        bad += [f"seed {seed} ({best['path'].name}): {m}" for m in _misses(per_seed.get(seed, {}), best)]
    how = f"{len(chosen)} log(s): " + ", ".join(g["path"].name for g in chosen)
    if not listed and "val_bpb" in sub and len(chosen) > 1 and not _agrees(sub["val_bpb"], _mean(
            [g["score"]["val_bpb"] for g in chosen])):
        alone = [g for g in chosen if _agrees(sub["val_bpb"], g["score"]["val_bpb"])]
        if alone:
            chosen, how = alone[:1], f"{alone[0]['path'].name} alone (the json names one run; the other logs are not in it)"
    return chosen, how, bad


def _submission_rows(sub: dict, logs: list[dict]) -> list[Row]:
    """submission.json against the logs: per seed, score, bytes, steps and times; seeds and significance."""
    chosen, how, bad = _submission_runs(sub, logs)
    n_fields = sum(len([k for k in v if k in SEED_FIELDS]) for v in _per_seed(sub).values())
    rows = [Row("submission.json per seed", "no per-seed results" if not n_fields else f"{n_fields} numbers of "
                f"{len(_per_seed(sub))} seeds" + (": " + "; ".join(bad) if bad else " agree"), "the logs",
                "N/A" if not n_fields else "FAIL" if bad else "PASS")]
    for group, fields in _folder_fields(chosen).items():
        present = {k: v for k, v in fields.items() if k in sub}
        wrong = [f"{k} {sub[k]} vs {v if v is None else round(v, 8)}" for k, v in present.items()
                 if not _agrees(sub[k], v)]
        rows.append(Row(f"submission.json {group}", f"none of {', '.join(fields)}" if not present else
                        f"{', '.join(present)}: " + ("; ".join(wrong) if wrong else "agree") + f" ({how})",
                        "the logs", "N/A" if not present else "FAIL" if wrong else "PASS"))
    baseline = sub.get("comparison_baseline_bpb")
    claim = baseline is not None
    rows.append(Row("seeds", f"{len(chosen)} seed(s): {', '.join(str(g['seed']) for g in chosen)}",
                    "3 for a record (README)" if claim else "no record claimed (no comparison_baseline_bpb)",
                    ("PASS" if len(chosen) >= 3 else "FAIL") if claim else "INFO"))
    if not claim:
        rows.append(Row("significance", "not checkable here: submission.json names no comparison_baseline_bpb",
                        f"{THRESHOLD_NATS} nats at p < {ALPHA}", "N/A"))
    elif chosen:
        bpbs = [g["score"]["val_bpb"] for g in chosen]
        sig = significance(bpbs, [g["score"]["val_loss"] for g in chosen], float(baseline))
        rows.append(Row("significance", sig["note"] or f"mean val_bpb {statistics.mean(bpbs):.8f} vs "
                        f"{sig['target_val_bpb']:.8f} ({baseline} - {sig['threshold_bpb']:.6f}): p = {sig['p_value']:.3g}"
                        f" ({sig['test']})", f"{THRESHOLD_NATS} nats at p < {ALPHA}",
                        "PASS" if sig["beats_best"] else "FAIL"))
    return rows


def _other_code(folder: Path) -> Row | None:
    """Code files beside train_gpt.py: shown, not counted (README: counted code lives in train_gpt.py)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".py", ".c", ".cpp", ".cu", ".sh") and p.name != "train_gpt.py")
    if not files:
        return None
    return Row("other code in the folder", ", ".join(f"{p.name} {p.stat().st_size:,} bytes" for p in files),
               "not counted (counted code lives in train_gpt.py)", "INFO")


def check_folder(folder: str | Path, *, limit: int = LIMIT_BYTES, max_train_s: float = MAX_TRAIN_S,
                 max_eval_s: float = MAX_EVAL_S, require_8xh100: bool = False, strict_cap: bool = False) -> list[Row]:
    """Check a record folder as the organizers do: its files, every log (check_log with the folder's train_gpt.py, the
    model bytes from the log), and submission.json against the logs. Rows of a log are named `<log>: <rule>`."""
    folder = Path(folder)
    paths = folder_logs(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()] + ([] if paths else ["a log"])
    rows = [_row("folder files", not missing, f"{len(paths)} log(s)" + (f"; missing: {', '.join(missing)}" if missing
                                                                        else ", README.md, submission.json, train_gpt.py"),
                 "README.md, submission.json, train_gpt.py, logs")]
    if other := _other_code(folder):
        rows.append(other)
    script = folder / "train_gpt.py" if (folder / "train_gpt.py").is_file() else None
    logs = []
    for path in paths:
        log = parse_log(path)
        rows += [row._replace(rule=f"{path.relative_to(folder)}: {row.rule}") for row in check_log(
            log, script, None, limit=limit, max_train_s=max_train_s, max_eval_s=max_eval_s,
            require_8xh100=require_8xh100, strict_cap=strict_cap)]
        if log["format"] is not None and log["score"] is not None:
            logs.append(log)
    if "submission.json" in missing:
        return rows
    try:
        sub = json.loads((folder / "submission.json").read_text(encoding="utf-8"), parse_float=decimal.Decimal)
    except (OSError, ValueError) as exc:
        return rows + [Row("submission.json", f"not readable: {exc}", "-", "FAIL")]
    return rows + _submission_rows(sub, logs)


# ------------------------------------------------------------------ command line

def violations(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.status == "FAIL"]


def format_table(rows: list[Row]) -> str:
    table = [("rule", "value", "limit", "status"), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    return "\n".join(" | ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]) for r in table)


def add_rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=LIMIT_BYTES, help="artifact cap in bytes (default %(default)s)")
    parser.add_argument("--max-train-s", type=float, default=MAX_TRAIN_S, help="training cap (default %(default)s)")
    parser.add_argument("--max-eval-s", type=float, default=MAX_EVAL_S, help="evaluation cap (default %(default)s)")
    parser.add_argument("--require-8xh100", action="store_true",
                        help="fail a log whose hardware line is not 8x H100 (default: report it as INFO)")
    parser.add_argument("--strict-cap", action="store_true", help="apply the training cap to the millisecond, also to "
                        "a run the wallclock check stopped (default: such a run may end < 2 steps past it)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a train log, or a record folder, against the Parameter Golf "
                                     "rules. Never runs the checked code.")
    parser.add_argument("path", type=Path, help="logs/<RUN_ID>.txt, or a records/track_*/<folder>/")
    parser.add_argument("--script", type=Path, help="train_gpt.py: recount its bytes, compare with the log's source")
    parser.add_argument("--ptz", type=Path, help="compressed model file: recount its bytes")
    add_rule_options(parser)
    args = parser.parse_args(argv)
    rules = dict(limit=args.limit, max_train_s=args.max_train_s, max_eval_s=args.max_eval_s,
                 require_8xh100=args.require_8xh100, strict_cap=args.strict_cap)
    try:
        if args.path.is_dir():
            if args.script or args.ptz:
                parser.error("a folder is checked with its own train_gpt.py and logs: no --script or --ptz")
            rows = check_folder(args.path, **rules)
        else:
            log = parse_log(args.path)
            if log["format"] is None:
                print(f"error: {args.path}: {log['unrecognized']}", file=sys.stderr)
                return 2
            rows = check_log(log, args.script, args.ptz, **rules)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    bad = violations(rows)
    for row in bad:
        print(f"FAIL {row.describe()}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
