"""Plot train logs of any generation tools/runlog.py reads: validation BPB vs training time, train loss vs step.

Logs it cannot draw (no step lines, a format not recognized) are skipped and named, one line each on stderr; the
figure holds the others. Exit 1 only when no log can be drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if __package__ in (None, ""):  # run as `python tools/plot.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.runlog import parse_log


def label(log: dict) -> str:
    """`<folder> seed <seed>`: the record or run folder (above a logs/ folder), and the seed (else the file's name)."""
    path = log["path"].resolve()
    folder = path.parent.parent if path.parent.name == "logs" else path.parent
    return f"{folder.name} seed {log['seed']}" if log["seed"] is not None else f"{folder.name} {path.stem}"


def why_skipped(log: dict) -> str | None:
    if log["format"] is None:
        return log["unrecognized"]
    if not log["train_steps"] and not log["val_steps"]:
        return "no step lines"
    return None


def make_figure(paths: list[str | Path]) -> tuple[Figure, list[str]]:
    """One curve per drawable log in each of two axes, and the logs skipped (`path: why`, one each).
    ValueError when no log can be drawn."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_val, ax_train = fig.subplots(1, 2)
    skipped, drawn = [], 0
    for path in paths:
        log = parse_log(path)
        if reason := why_skipped(log):
            skipped.append(f"{path}: {reason}")
            continue
        drawn += 1
        name = label(log)
        val = [s for s in log["val_steps"] if s["train_time_ms"] is not None]
        ax_val.plot([s["train_time_ms"] / 1000 for s in val], [s["val_bpb"] for s in val],
                    marker="o", markersize=3, label=name)
        ax_train.plot([s["step"] for s in log["train_steps"]],
                      [s["train_loss"] for s in log["train_steps"]], label=name)
    if not drawn:
        raise ValueError("no log can be drawn: " + "; ".join(skipped))
    ax_val.set(xlabel="training time (s)", ylabel="val_bpb", title="validation BPB")
    ax_train.set(xlabel="step", ylabel="train loss (nats)", title="train loss")
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot val_bpb vs training time and train loss vs step, one curve "
                                     "per log (any generation runlog.py reads); names the logs it skips.")
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="train logs, one curve each")
    parser.add_argument("--out", type=Path, default=Path("runs.png"), help="image to write (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        fig, skipped = make_figure(args.logs)
        fig.savefig(args.out, dpi=120)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
