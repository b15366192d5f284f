"""The tables of ablations/README.md, from the result files in ablations/.

  python tools/ablation_tables.py            # print every generated block
  python tools/ablation_tables.py --check    # exit 1, with one line, if ablations/README.md differs
  python tools/ablation_tables.py --write    # rewrite the generated blocks in place

A generated block is `<!-- generated: NAME -->` ... `<!-- end: NAME -->`; everything outside the markers is
hand-written and kept. NAME is a composite table (combinations, comparisons, qat, ttt_gain: several files, cross-file
references) or the stem of a JSON file in the folder, rendered by its format:
  tools/ablate.py's ablate.json  every variant against the reference: mean +- sample std, pre-quantization, gap,
                                 difference, Welch's t-test p, paired (by seed) difference and p, ms/step
  {"protocol", "reference", "arms": {ARM: {"env", "seeds": {SEED: bpb}}}}  (rescoring A/Bs) arm | env |
                                 mean +- std | difference from the reference, paired by seed (mean +- std) | paired p
  the TTT summary ({"protocol", "runs", "gain", ...})  per seed, and the gains recomputed from the runs
Composite tables also read tools/requant.py's tables kept as .md files (the rows under `## seed N: ...`).
--check also fails when a JSON file in the folder is in no block. p-values: scipy. Exit 0, 1 (one line), 2 (arguments).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^<!-- generated: (\S+) -->\n(.*?)^<!-- end: (\S+) -->$", re.S | re.M)  # each on its own line
HIDDEN_ENV = ("DATA_PATH", "TOKENIZER_PATH")  # paths of the machine that ran them


class Failure(Exception):
    pass


def shown(path: Path) -> str:
    """path relative to the working directory when it is under it (messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- numbers

def fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def fmt_p(p) -> str:
    if p is None:
        return "-"
    if p >= 0.1:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    if p >= 1e-4:
        return f"{p:.4f}"
    mant, exp = f"{p:.0e}".split("e")
    return f"{mant}e{int(exp)}"


def mean_std(values) -> str:
    values = list(values)
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else None
    return f"{statistics.mean(values):.4f}" + ("" if std is None else f" +- {std:.4f}")


def welch_p(a, b):
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def paired(a: dict, b: dict):
    """(mean, std, p) of a - b over the seeds both have (paired t-test), or Nones."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) < 2:
        return (diffs[0] if diffs else None), None, None
    from scipy import stats
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return statistics.mean(diffs), statistics.stdev(diffs), (p if math.isfinite(p) else None)


def paired_cell(a: dict, b: dict) -> tuple[str, str]:
    m, s, p = paired(a, b)
    return ("-" if m is None else f"{m:+.4f}" + ("" if s is None else f" +- {s:.4f}")), fmt_p(p)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def env_text(env: dict) -> str:
    items = [f"{k}={v}" for k, v in env.items() if k not in HIDDEN_ENV]
    return f"`{' '.join(items)}`" if items else "(none)"


# ---------------------------------------------------------------- sources

class Sources:
    def __init__(self, folder: Path):
        self.folder, self.cache, self.used = folder, {}, set()

    def json(self, stem: str) -> dict:
        if stem not in self.cache:
            path = self.folder / f"{stem}.json"
            if not path.is_file():
                raise Failure(f"{shown(path)} does not exist")
            try:
                self.cache[stem] = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise Failure(f"{shown(path)} is not JSON: {e}") from None
        self.used.add(stem)
        return self.cache[stem]

    def kind(self, stem: str) -> str:
        d = self.json(stem)
        if isinstance(d, dict) and {"variants", "runs", "reference"} <= set(d):
            return "ablate"
        if isinstance(d, dict) and isinstance(d.get("arms"), dict) and "reference" in d:
            return "arms"
        if isinstance(d, dict) and {"runs", "gain"} <= set(d):
            return "ttt_summary"
        raise Failure(f"{shown(self.folder / stem)}.json: not an ablate.py, arms or TTT summary file")

    def runs(self, stem: str, variant: str) -> list[dict]:
        d = self.json(stem)
        if variant not in d["variants"]:
            raise Failure(f"{stem}.json has no variant {variant!r}")
        return [r for r in d["runs"] if r["variant"] == variant]

    def post(self, stem: str, variant: str) -> dict:
        """seed -> final val_bpb of the successful runs."""
        return {r["seed"]: r["post_bpb"] for r in self.runs(stem, variant) if r["ok"]}

    def requant(self, name: str, section: str, method: str) -> tuple[dict, list[float]]:
        """From a tools/requant.py table kept as .md: seed -> val_bpb after export, and the bytes per parameter,
        of `method` in every `## seed N: ...` section whose title contains `section`."""
        path = self.folder / name
        if not path.is_file():
            raise Failure(f"{shown(path)} does not exist")
        after, bpp = {}, []
        sections = re.findall(r"(?m)^## seed (\d+): ([^\n]*)\n```\n((?:\|[^\n]*\n)*)```", path.read_text("utf-8"))
        for seed, title, body in sections:
            if section in title:
                for row in re.findall(rf"(?m)^\| {re.escape(method)} \| (.*) \|$", body):
                    cells = [c.strip() for c in row.split("|")]
                    after[int(seed)], bpp = float(cells[4]), bpp + [float(cells[1])]
        if not after:
            raise Failure(f"{shown(path)}: no {method!r} rows under a '## seed N: ...{section}...' section")
        return after, bpp


# ---------------------------------------------------------------- renderers by format

def render_ablate(src: Sources, stem: str) -> str:
    d = src.json(stem)
    ref = d["reference"]
    ref_post = src.post(stem, ref)
    rows, failed = [], []
    for v, env in d["variants"].items():
        runs = src.runs(stem, v)
        ok = [r for r in runs if r["ok"]]
        failed += [f"`{v}` seed {r['seed']}: {r.get('reason') or 'failed'}" for r in runs if not r["ok"]]
        post = {r["seed"]: r["post_bpb"] for r in ok}
        pre = [r["pre_bpb"] for r in ok if r.get("pre_bpb") is not None]
        gap = [r["quant_gap"] for r in ok if r.get("quant_gap") is not None]
        ms = [r["step_avg_ms"] for r in ok if r.get("step_avg_ms") is not None]
        is_ref = v == ref
        diff = None if is_ref or not post or not ref_post else statistics.mean(post.values()) - statistics.mean(
            ref_post.values())
        pd, pp = ("", "") if is_ref else paired_cell(post, ref_post)
        rows.append([f"`{v}`", env_text(env), f"{len(ok)}/{len(runs)}", mean_std(post.values()), mean_std(pre),
                     fmt(statistics.mean(gap) if gap else None), "" if is_ref else fmt(diff, "+.4f"),
                     "" if is_ref else fmt_p(welch_p(post.values(), ref_post.values())), pd, pp,
                     fmt(statistics.mean(ms) if ms else None, ".0f")])
    common = {k: v for k, v in d.get("env", {}).items()}
    head = (f"`{stem}.json` (`tools/ablate.py`), reference `{ref}`, seeds {', '.join(map(str, d['seeds']))}; "
            f"common env {env_text(common)}.")
    out = head + "\n\n" + table(["arm", "env", "ok", "val_bpb", "pre-quant", "gap", f"vs `{ref}`", "Welch p",
                                 "paired diff", "paired p", "ms/step"], rows)
    return out + ("\n\nFailed: " + "; ".join(failed) + "." if failed else "")


def render_arms(src: Sources, stem: str) -> str:
    d = src.json(stem)
    ref, arms = d["reference"], d["arms"]
    if ref not in arms:
        raise Failure(f"{stem}.json: reference {ref!r} is not one of its arms")
    seeds = {a: {str(k): float(v) for k, v in arm.get("seeds", {}).items()} for a, arm in arms.items()}
    rows = []
    for a, arm in arms.items():
        pd, pp = ("", "") if a == ref else paired_cell(seeds[a], seeds[ref])
        env = arm.get("env", "")
        rows.append([f"`{a}`", f"`{env}`" if env else "(none)", mean_std(seeds[a].values()), pd, pp])
    head = f"`{stem}.json`: {d.get('protocol', '')} Reference `{ref}`; differences paired by seed."
    return head + "\n\n" + table(["arm", "env", "val_bpb (mean +- std)", f"vs `{ref}` (paired)", "paired p"], rows)


def render_ttt_summary(src: Sources, stem: str, check: str | None = None) -> str:
    d = src.json(stem)
    runs = sorted(d["runs"], key=lambda r: r["seed"])
    if check:  # the TTT scores are those of the ablate.py runs
        post = src.post(check, "ttt")
        for r in runs:
            if abs(post.get(r["seed"], math.inf) - r["ttt"]) > 1e-8:
                raise Failure(f"{stem}.json seed {r['seed']}: ttt {r['ttt']} is not {check}.json's "
                              f"{post.get(r['seed'])}")
    col = lambda k: {r["seed"]: r[k] for r in runs}
    plain, lr0, ttt = col("plain"), col("ttt_lr0"), col("ttt")
    rows = [[str(r["seed"]), f"{r['plain']:.4f}", f"{r['ttt_lr0']:.4f}", f"**{r['ttt']:.4f}**",
             f"{r['ttt_ms'] / 1000:.0f} s"] for r in runs]
    rows.append(["mean +- std", mean_std(plain.values()), mean_std(lr0.values()), f"**{mean_std(ttt.values())}**", ""])
    gains = []
    for what, a, b, key in (("TTT - plain (the gain)", ttt, plain, "gain"),
                            ("TTT_LR=0 - plain (document-bounded windows alone)", lr0, col("ctrl_plain"),
                             "context_only"),
                            ("TTT - TTT_LR=0 (the adaptation)", ttt, lr0, "adaptation_only")):
        m, s, p = paired(a, b)
        if key in d and abs(d[key]["mean"] - m) > 1e-6:
            raise Failure(f"{stem}.json: {key} mean {d[key]['mean']} is not the runs' {m}")
        gains.append([what, f"{m:+.4f} +- {s:.4f}", fmt_p(p)])
    head = f"`{stem}.json`" + (f" and `{check}.json`" if check else "") + f": {d.get('protocol', '')}."
    return (head + "\n\n" + table(["seed", "plain (stride 128)", "TTT, no adaptation (`TTT_LR=0`)", "**TTT**",
                                   "TTT time (this CPU, 1 thread)"], rows)
            + "\n\n" + table(["difference, per seed", "mean +- std", "paired p"], gains))


def render_stem(src: Sources, stem: str) -> str:
    return {"ablate": render_ablate, "arms": render_arms, "ttt_summary": render_ttt_summary}[src.kind(stem)](src, stem)


# ---------------------------------------------------------------- composite tables

def combinations(src: Sources) -> str:
    ref = src.post("2026-11-23_recipe", "wdlong")
    rows = [("wdlong (retraction, relu^2, no momentum warm-up, no EMA)", "2026-11-23_recipe", "wdlong"),
            ("+ `SPHERE_OPT=wn MUON_WD=0.04`", "2026-11-23_long_warmdown", "wdlong_wn"),
            ("+ `LEAKY_SLOPE=0.5`", "2026-11-23_long_warmdown", "wdlong_leaky"),
            ("+ momentum warm-up (75 steps)", "2026-11-23_long_warmdown", "wdlong_mwu"),
            ("+ wn, leaky, momentum warm-up", "2026-11-23_confirm", "new_noema"),
            ("+ wn, leaky, momentum warm-up, `EMA_DECAY=0.94`", "2026-11-23_confirm", "new"),
            ("**+ leaky, momentum warm-up: the defaults**", "2026-11-23_final", "final")]
    out = []
    for label, stem, v in rows:
        post = src.post(stem, v)
        if stem == "2026-11-23_recipe":
            out.append([label, f"`{stem}` `{v}`", mean_std(post.values()), "", "", "", ""])
            continue
        pd, pp = paired_cell(post, ref)
        diff = statistics.mean(post.values()) - statistics.mean(ref.values())
        out.append([label, f"`{stem}` `{v}`", mean_std(post.values()), f"{diff:+.4f}",
                    fmt_p(welch_p(post.values(), ref.values())), pd, pp])
    return table(["arm (P1, `WARMDOWN_ITERS=212`)", "runs", "val_bpb mean +- std", "vs wdlong", "Welch p",
                  "paired diff", "paired p"], out)


def comparisons(src: Sources) -> str:
    pairs = [("EMA on top of wn, leaky, momentum warm-up, long warm-down", ("2026-11-23_confirm", "new"),
              ("2026-11-23_confirm", "new_noema")),
             ("the defaults against the defaults before the recipe (init d^-0.5, warm-down 24%, relu^2)",
              ("2026-11-23_final", "final"), ("2026-11-23_confirm", "old"))]
    rows = []
    for what, (sa, va), (sb, vb) in pairs:
        a, b = src.post(sa, va), src.post(sb, vb)
        pd, pp = paired_cell(a, b)
        rows.append([what, f"`{sa}` `{va}`: {mean_std(a.values())}", f"`{sb}` `{vb}`: {mean_std(b.values())}",
                     f"{statistics.mean(a.values()) - statistics.mean(b.values()):+.4f}",
                     fmt_p(welch_p(a.values(), b.values())), pd, pp])
    return table(["comparison", "a", "b", "a - b", "Welch p", "paired diff", "paired p"], rows)


def qat(src: Sources) -> str:
    md = "2026-11-23_qat_requant.md"
    full = "nvfp4 run's weights, --methods nvfp4 rtn gptq"  # section titles of the .md
    low = "nvfp4 run's weights, --methods rtn gptq --bytes-per-param 0.40"
    qat_low = "QAT run's weights (0.40)"

    def requant(section, method):
        after, bpp = src.requant(md, section, method)
        return after, f"{statistics.mean(bpp):.4f}", f"`{md}`: {method}, {section.split(',')[0].split(' (')[0]}"

    def ablate(stem, variant):
        target = src.json(stem)["env"].get("TARGET_BYTES_PER_PARAM")
        return src.post(stem, variant), (f"target {target}" if target else "(its format)"), f"`{stem}` `{variant}`"

    groups = [
        [("**(a) RMS step + GPTQ, no QAT**", requant(full, "gptq")),
         ("RMS step, round to nearest, no QAT", requant(full, "rtn")),
         ("(b) QAT (round to nearest), exported round to nearest", ablate("2026-11-23_qat_int_057", "rtn_qat")),
         ("(b) QAT, exported with GPTQ", ablate("2026-11-23_qat_int_057", "gptq_qat")),
         ("(c) NVFP4-style, no QAT", ablate("2026-11-23_qat_nvfp4", "nvfp4")),
         ("(d) NVFP4-style + QAT", ablate("2026-11-23_qat_nvfp4", "nvfp4_qat"))],
        [("*at 0.40 bytes/param:* RMS step + GPTQ, no QAT", requant(low, "gptq")),
         ("round to nearest, no QAT", requant(low, "rtn")),
         ("QAT, exported round to nearest", requant(qat_low, "rtn")),
         ("QAT, exported with GPTQ", ablate("2026-11-23_qat_int_040", "gptq_qat040"))]]
    rows = []
    for group in groups:
        ref = group[0][1][0]
        for i, (label, (post, bpp, source)) in enumerate(group):
            pd, pp = ("", "") if i == 0 else paired_cell(post, ref)
            v = mean_std(post.values())
            rows.append([label, source, bpp, f"**{v}**" if i == 0 else v, pd, pp])
    return table(["arm (P1, 3 seeds)", "runs", "bytes/param", "val_bpb", "vs GPTQ, paired", "p (paired t)"], rows)


def ttt_gain(src: Sources) -> str:
    return render_ttt_summary(src, "2026-11-24_ttt_summary", check="2026-11-24_ttt")


TABLES = {"combinations": combinations, "comparisons": comparisons, "qat": qat, "ttt_gain": ttt_gain}


# ---------------------------------------------------------------- the README

def render(src: Sources, name: str) -> str:
    return TABLES[name](src) if name in TABLES else render_stem(src, name)


def rebuild(text: str, src: Sources) -> tuple[str, list[str]]:
    """The README with every generated block re-rendered, and the names of the blocks."""
    names, pieces, at = [], [], 0
    for m in BLOCK.finditer(text):
        name, end = m.group(1), m.group(3)
        if end != name:
            raise Failure(f"block '{name}' ends with '<!-- end: {end} -->'")
        if re.search(r"(?m)^<!-- generated:", m.group(2)):
            raise Failure(f"block '{name}' has no end marker before the next block")
        known = name in TABLES or (re.fullmatch(r"[A-Za-z0-9_.-]+", name) and (src.folder / f"{name}.json").is_file())
        if not known:
            raise Failure(f"block '{name}' is neither a table of tools/ablation_tables.py nor a JSON file in "
                          f"{shown(src.folder)}")
        names.append(name)
        try:
            body = render(src, name)
        except (KeyError, TypeError, ValueError, AttributeError, statistics.StatisticsError) as e:
            raise Failure(f"block '{name}': its result file is malformed ({type(e).__name__}: {e})") from None
        pieces += [text[at:m.start(2)], body + "\n"]
        at = m.end(2)
    opened, closed = len(re.findall(r"(?m)^<!-- generated: ", text)), len(re.findall(r"(?m)^<!-- end: ", text))
    if opened != len(names) or closed != len(names):
        raise Failure(f"unbalanced markers: {opened} '<!-- generated: NAME -->', {closed} '<!-- end: NAME -->'")
    return "".join(pieces) + text[at:], names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the generated tables of ablations/README.md from the result "
                                     "files in ablations/.", epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the README differs from what --write would make")
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks of the README")
    parser.add_argument("--dir", type=Path, default=ROOT / "ablations", help="folder of the result files")
    parser.add_argument("--readme", type=Path, help="the README with the blocks (default DIR/README.md)")
    args = parser.parse_args(argv)
    readme = args.readme or args.dir / "README.md"
    name = shown(readme)
    try:
        if not readme.is_file():
            raise Failure(f"{name} does not exist")
        text = readme.read_text(encoding="utf-8")
        src = Sources(args.dir)
        new, names = rebuild(text, src)
        unused = sorted(p.stem for p in args.dir.glob("*.json") if p.stem not in src.used)
        if args.write:
            if new != text:
                readme.write_text(new, encoding="utf-8")
            print(f"{name}: {len(names)} generated blocks written" + (new == text) * " (unchanged)")
            for stem in unused:
                print(f"ablation_tables: note: {shown(args.dir / stem)}.json is in no generated block", file=sys.stderr)
        elif args.check:
            stale = [n for n, a, b in zip(names, BLOCK.findall(text), BLOCK.findall(new)) if a[1] != b[1]]
            if stale:
                raise Failure(f"{name}: block '{stale[0]}' differs from what tools/ablation_tables.py writes "
                              f"(run it with --write)")
            if unused:
                raise Failure(f"{shown(args.dir / unused[0])}.json is in no generated block of {name}")
            print(f"{name}: {len(names)} generated blocks up to date")
        else:
            for name, (_, body, _) in zip(names, BLOCK.findall(new)):
                print(f"<!-- generated: {name} -->\n{body}<!-- end: {name} -->\n")
    except Failure as e:
        print(f"ablation_tables: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
