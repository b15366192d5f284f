"""Summary of ablations/2026-12-02_lqer.jsonl (tools/requant.py table --jsonl rows): per budget and arm, the landed
bytes and steps, the quantization gap mean +- std over the three models, and the paired (by model) difference from
gptq with its two-sided paired t-test p (scipy's ttest_rel, checked against the closed form for 2 degrees of freedom);
then, per arm over every budget it ran at, the pooled paired difference: each model's mean difference over the budgets
(a one-sample t-test over the 3 models) and, naively, every (model, budget) pair as if independent; and gptq's gap
against its bytes (least squares over every (model, budget), a common slope with a per-model intercept), to price
the bytes an arm landed short of gptq's inside the 0.5% window.

    python ablations/2026-12-02_lqer_summary.py ablations/2026-12-02_lqer.jsonl
"""
import json
import math
import re
import statistics
import sys
from collections import defaultdict

from scipy import stats


def arm(row):
    if row["method"] == "gptq":  # the control rows: gptq with --env EMBED_STEP_RATIO=R
        return " ".join(["gptq"] + [f"esr{kv.split('=')[1]}" for kv in row.get("env", [])])
    return f"lqer r{row['lqer_rank']} k{row['lqer_top'] or 'all'}"


def main(path):
    rows = [json.loads(line) for line in open(path)]
    by = defaultdict(dict)  # (bpp, arm) -> {model: row}
    for r in rows:
        by[r["bytes_per_param"], arm(r)][re.search(r"base_s\d", r["model"]).group()] = r
    print("| B/param | arm | bytes (per model) | step xRMS (per model) | factor bytes | gap mean +- std | "
          "paired diff vs gptq (mean +- std) | paired p |")
    print("|---|---|---|---|---|---|---|---|")
    for bpp in sorted({k[0] for k in by}, reverse=True):
        ref = by[bpp, "gptq"]
        for (b, name), seeds in sorted(by.items(), key=lambda kv: (kv[0][1] != "gptq", kv[0][1])):
            if b != bpp:
                continue
            ms = sorted(seeds)
            gaps = [seeds[m]["gap"] for m in ms]
            size = ", ".join(f"{seeds[m]['bytes']:,}" for m in ms)
            step = ", ".join(re.search(r"step:([\d.]+)xRMS", seeds[m]["how"]).group(1) for m in ms)
            fac = ", ".join(f"{seeds[m].get('lqer_bytes', 0):,}" for m in ms) if name != "gptq" else "-"
            cell, pcell = "", ""
            if name != "gptq" and "lqer_bytes" not in seeds[ms[0]]:
                fac = "-"
            if name != "gptq":
                d = [seeds[m]["gap"] - ref[m]["gap"] for m in ms]
                p = stats.ttest_rel([seeds[m]["gap"] for m in ms], [ref[m]["gap"] for m in ms]).pvalue
                t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
                if len(d) == 3:  # Student t, 2 degrees of freedom: p = 1 - |t| / sqrt(t^2 + 2)
                    assert abs(p - (1 - abs(t) / math.sqrt(t * t + 2))) < 1e-9
                cell, pcell = f"{statistics.mean(d):+.5f} +- {statistics.stdev(d):.5f}", f"{p:.2f}"
            print(f"| {bpp} | {name} | {size} | {step} | {fac} | {statistics.mean(gaps):+.5f} +- "
                  f"{statistics.stdev(gaps):.5f} | {cell} | {pcell} |")

    print("\n| arm | budgets | pairs | bytes vs gptq (mean) | diff, per-model means over budgets (mean +- std) | p (3 models) | "
          "diff, all pairs (mean +- std) | p (naive) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in sorted({k[1] for k in by} - {"gptq"}):
        per_model, pairs, short = defaultdict(list), [], []
        budgets = sorted(b for b, a in by if a == name)
        for b in budgets:
            for m, r in by[b, name].items():
                d = r["gap"] - by[b, "gptq"][m]["gap"]
                per_model[m].append(d)
                pairs.append(d)
                short.append(r["bytes"] - by[b, "gptq"][m]["bytes"])
        means = [statistics.mean(v) for _, v in sorted(per_model.items())]
        p3 = stats.ttest_1samp(means, 0).pvalue
        pn = stats.ttest_1samp(pairs, 0).pvalue
        print(f"| {name} | {', '.join(map(str, budgets))} | {len(pairs)} | {statistics.mean(short):+,.0f} | "
              f"{statistics.mean(means):+.5f} +- {statistics.stdev(means):.5f} | {p3:.2f} | "
              f"{statistics.mean(pairs):+.5f} +- {statistics.stdev(pairs):.5f} | {pn:.3f} |")
    g = [(r["bytes"], r["gap"], m) for (b, a), seeds in by.items() if a == "gptq" for m, r in seeds.items()]
    models = sorted({m for _, _, m in g})
    xm = {m: statistics.mean(x for x, _, k in g if k == m) for m in models}
    ym = {m: statistics.mean(y for _, y, k in g if k == m) for m in models}
    slope = sum((x - xm[m]) * (y - ym[m]) for x, y, m in g) / sum((x - xm[m]) ** 2 for x, _, m in g)
    print(f"\ngptq's gap against its bytes: {slope * 1000:+.6f} bpb per 1,000 bytes "
          f"({len(g)} (model, budget) points, per-model intercepts)")


if __name__ == "__main__":
    main(sys.argv[1])
