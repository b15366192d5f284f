"""Plot train logs: validation BPB vs training time, and train loss vs step."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if __package__ in (None, ""):  # run as `python tools/plot.py`: make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.runlog import parse_log


def make_figure(paths: list[str | Path]) -> Figure:
    """One curve per log in each of two axes; raises ValueError for a log without step lines."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_val, ax_train = fig.subplots(1, 2)
    for path in paths:
        log = parse_log(path)
        if not log["train_steps"] and not log["val_steps"]:
            raise ValueError(f"{path}: no step lines")
        label = log["run_id"] or Path(path).stem
        val = [s for s in log["val_steps"] if s["train_time_ms"] is not None]
        ax_val.plot([s["train_time_ms"] / 1000 for s in val], [s["val_bpb"] for s in val],
                    marker="o", markersize=3, label=label)
        ax_train.plot([s["step"] for s in log["train_steps"]],
                      [s["train_loss"] for s in log["train_steps"]], label=label)
    ax_val.set(xlabel="training time (s)", ylabel="val_bpb", title="validation BPB")
    ax_train.set(xlabel="step", ylabel="train loss (nats)", title="train loss")
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot val_bpb vs training time and train loss vs step.")
    parser.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="train logs, one curve each")
    parser.add_argument("--out", type=Path, default=Path("runs.png"), help="image to write (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        make_figure(args.logs).savefig(args.out, dpi=120)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
