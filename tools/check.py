"""Check one train log against the challenge rules.

Prints a table (rule | value | limit | status) and exits 1 listing every violation,
0 when clean, 2 when the inputs cannot be read. Import check_log() to reuse the rules.
"""

from __future__ import annotations

import argparse
import ast
import base64
import lzma
import re
import sys
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as `python tools/check.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.runlog import finite, parse_log

LIMIT_BYTES = 16_000_000
MAX_TRAIN_S = 600.0
MAX_EVAL_S = 600.0


class Row(NamedTuple):
    rule: str
    value: str
    limit: str
    status: str  # PASS, FAIL or INFO

    def describe(self) -> str:
        return f"{self.rule}: {self.value} (limit: {self.limit})"


def _row(rule: str, ok: bool, value, limit="-") -> Row:
    return Row(rule, str(value), str(limit), "PASS" if ok else "FAIL")


def is_8xh100(log: dict) -> bool:
    """True when the log's hardware line names 8 H100s and world_size (if logged) is 8."""
    return bool(re.match(r"8x\b.*H100", log["hardware"] or "")) and log["world_size"] in (None, 8)


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def counted_code_bytes(source: str) -> int | None:
    """Code bytes as the merged records count them (#1855, #2135): the size of the script's own self-extracting
    wrapper (its code_wrapper(), run from the script's text without importing it); None for a script without one."""
    tree = ast.parse(source)
    keep = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in ("minified", "code_wrapper")
            or isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LZMA_FILTERS" for t in node.targets)]
    if len(keep) != 3:
        return None
    namespace = {"ast": ast, "base64": base64, "lzma": lzma}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "<train_gpt.py>", "exec"), namespace)
    return len(namespace["code_wrapper"](source).encode("utf-8"))


def check_log(log: dict | str | Path, script: str | Path | None = None, ptz: str | Path | None = None, *,
              limit: int = LIMIT_BYTES, max_train_s: float = MAX_TRAIN_S, max_eval_s: float = MAX_EVAL_S,
              require_8xh100: bool = False) -> list[Row]:
    """Check a log (a path or a parse_log() dict); returns one Row per rule.

    With script and/or ptz the artifact size is recomputed from those files (the other
    part from the log) and must equal the log's total; with script the source embedded
    in the log must be byte-identical to it.
    """
    if not isinstance(log, dict):
        log = parse_log(log)
    rows = []
    logged = log["submission_bytes"] or {}
    plain = counted = None
    if script:
        text = Path(script).read_bytes()
        plain, counted = len(text), counted_code_bytes(text.decode("utf-8"))
    code = (counted if counted is not None else plain) if script else logged.get("code")
    model = Path(ptz).stat().st_size if ptz else logged.get("model")
    total = logged.get("total")
    if script or ptz:
        total = None if None in (code, model) else code + model
    rows.append(_row("artifact bytes", total is not None and total <= limit,
                     "missing" if total is None else total, limit))
    if counted is not None and model is not None:
        fits = plain + model <= limit
        rows.append(Row("code counting", f"{counted} bytes as the records count it (lzma + base85 wrapper, #1855 "
                        f"#2135); plain {plain}: code + model {plain + model} " + ("also fits" if fits else
                        "is over the limit, only the wrapper's count passes"), "-", "INFO"))
    if script or ptz:
        same = total is not None and total == logged.get("total")
        rows.append(_row("bytes match log", same or counted is not None and plain == log.get("code_bytes_plain")
                         and model == logged.get("model"), f"{total} recomputed, {logged.get('total')} logged"
                         + ("" if same or counted is None else " (the wrapper's count depends on the Python and "
                            "liblzma that ran the log: the plain bytes and the model match)"), "equal"))
    for rule, ms, cap in (("training time", log["train_time_ms"], max_train_s),
                          ("evaluation time", log["eval_time_ms"], max_eval_s)):
        rows.append(_row(rule, finite(ms) and ms <= cap * 1000,
                         "missing" if ms is None else f"{ms / 1000:.3f} s", f"{cap:g} s"))
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
    exact = log["final_exact"]
    rows.append(_row("final score", exact is not None and finite(exact["val_loss"]) and finite(exact["val_bpb"]),
                     "missing" if exact is None else f"val_loss {exact['val_loss']} val_bpb {exact['val_bpb']}",
                     "finite"))
    if script:
        want, got = Path(script).read_bytes(), log["source"]
        got = None if got is None else got.encode("utf-8")
        value = ("no source in log" if got is None else "identical" if got == want
                 else f"differs at byte {_first_difference(got, want)}")
        rows.append(_row("source matches script", got == want, value, Path(script).name))
    bad = log["nonfinite"]
    rows.append(_row("finite losses", not bad, f"{len(bad)} non-finite line(s)" + (f", first: {bad[0]}" if bad else ""),
                     "0"))
    rows.append(_row("no error line", not log["errors"], log["errors"][0] if log["errors"] else "none", "none"))
    hardware = f"{log['hardware']} (world_size {log['world_size']})"
    status = ("PASS" if is_8xh100(log) else "FAIL") if require_8xh100 else "INFO"
    rows.append(Row("8x H100", hardware, "required" if require_8xh100 else "not required", status))
    return rows


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a train log against the Parameter Golf rules.")
    parser.add_argument("log", type=Path, help="logs/<RUN_ID>.txt written by train_gpt.py")
    parser.add_argument("--script", type=Path, help="train_gpt.py: recount its bytes, compare with the log's source")
    parser.add_argument("--ptz", type=Path, help="compressed model file: recount its bytes")
    add_rule_options(parser)
    args = parser.parse_args(argv)
    try:
        rows = check_log(args.log, args.script, args.ptz, limit=args.limit, max_train_s=args.max_train_s,
                         max_eval_s=args.max_eval_s, require_8xh100=args.require_8xh100)
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
