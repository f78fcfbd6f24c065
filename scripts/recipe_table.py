#!/usr/bin/env python3
"""Table and learning curves of the recipe study (scripts/recipe_study.sh).

    python3 scripts/recipe_table.py RECIPE_DIR [EXTRA_RUN ...]

Reads each run's log.json (per-epoch validation), result.json (the best epoch
on the val split), test.json (the trainer's windows of the test split) and
RECIPE_DIR/replay-*.json (the replay of the test split, every predictor paired
with last_step); writes RECIPE_DIR/table.md and, when matplotlib is installed,
RECIPE_DIR/curves.png. Recovery in %, differences in points against the
last-step predictor on the same windows or steps.
"""
import glob
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def by_budget(res):
    return {b["budget"]: b for b in res.get("budgets", [])} if res else {}


def cumulative(log):
    """(windows seen, optimizer steps or None, epoch record) after each epoch."""
    out, seen = [], 0.0
    for e in log.get("epochs", []):
        w = e.get("train_windows")
        if w is None:  # logs written before train_windows existed
            w = e.get("seconds", 0.0) * e.get("train_samples_per_s", 0.0)
        seen += w
        # The trainer's adam_step (older logs: optimizer_steps) advances twice
        # per batch (docs/predictor.md, "Known defect"); logs without it get
        # full batches of 256, which subsampled runs do not have.
        raw = e.get("adam_step", e.get("optimizer_steps"))
        steps = raw / 2.0 if raw is not None else None
        out.append((seen, steps, e))
    return out


def row_of(run):
    log = load(os.path.join(run, "log.json"))
    res = load(os.path.join(run, "result.json")) or load(os.path.join(run, "train.json"))
    if not log or not res:
        return None
    test = load(os.path.join(run, "test.json"))
    opts = ""
    try:
        with open(os.path.join(run, "options.txt")) as f:
            opts = f.read().strip()
    except OSError:
        cfg = load(os.path.join(run, "config.json")) or {}
        opts = "(see %s/config.json)" % run
        if cfg.get("query_fusion"):
            opts = "scripts/train_shipped_predictor.sh"
    curve = cumulative(log)
    return {
        "name": os.path.basename(run.rstrip("/")),
        "run": run,
        "opts": opts,
        "windows": curve[-1][0] if curve else 0,
        "params": res.get("params"),
        "val": by_budget(res),
        "test": by_budget(test),
        "curve": curve,
        "best_epoch": res.get("best_epoch"),
    }


def replay_diffs(root):
    """{(predictor name, budget): (diff, lo, hi)} from every replay-*.json."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "replay-*.json"))):
        rep = load(path) or {}
        for d in rep.get("paired_vs_last_step") or []:
            out[(d["method"], d["budget"])] = (d["recovery_diff"], d["ci95_lo"], d["ci95_hi"])
    return out


def rcell(diffs, name, budget):
    d = diffs.get((name, budget))
    if not d:
        return "–"
    txt = "%+.2f [%+.2f, %+.2f]" % tuple(100 * x for x in d)
    return "**%s**" % txt if d[1] > 0 or d[2] < 0 else txt


def cell(b, budget):
    r = b.get(budget)
    if not r:
        return "–"
    return "%.2f (%+.2f)" % (100 * r["recovery"], 100 * (r["recovery"] - r["last_step_recovery"]))


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root = sys.argv[1]
    runs = sorted(os.path.join(root, d) for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)))
    runs += sys.argv[2:]
    rows = [r for r in (row_of(x) for x in runs) if r]
    if not rows:
        print("recipe_table.py: no finished runs under %s" % root, file=sys.stderr)
        return 1
    diffs = replay_diffs(root)
    lines = [
        "| run | windows | params | val 256 (trainer) | test 256 (trainer) | test 256, replay: diff [95% CI] | test 512, replay: diff [95% CI] | options |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | `%s` |" % (
            r["name"], "{:,.0f}".format(r["windows"]), r["params"] or "–",
            cell(r["val"], 256), cell(r["test"], 256),
            rcell(diffs, r["name"], 256), rcell(diffs, r["name"], 512), r["opts"]))
    note = ("\nTrainer columns: recovery % (difference from last_step on the same windows, points). "
            "Replay columns: difference from last_step in points with a 95% bootstrap interval over "
            "the 24 test sequences (first 24 decode steps, every layer and head); bold where it "
            "excludes zero.\n")
    out_md = os.path.join(root, "table.md")
    with open(out_md + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n" + note)
    os.replace(out_md + ".tmp", out_md)
    print("wrote %s" % out_md)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("recipe_table.py: matplotlib not installed: no curves.png", file=sys.stderr)
        return 0
    # Budget 256 only: the trainer's sparse rows are drawn at 256 or 512, so at
    # larger validation budgets last_step's newest row is too sparse to fill
    # the budget and the difference measures that, not the predictor.
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.6))
    # One colour and marker per run, the same in both panels: more runs than
    # matplotlib's default cycle has colours.
    cmap = plt.get_cmap("tab20")
    markers = "osD^vP*Xh<>"
    style = {r["name"]: dict(color=cmap(i % 20), marker=markers[i % len(markers)])
             for i, r in enumerate(rows)}
    for ax, xkey in zip(axes, ("windows", "steps")):
        for r in rows:
            pts = [((w if xkey == "windows" else st), 100 * (b["recovery"] - b["last_step_recovery"]))
                   for w, st, e in r["curve"] for b in e.get("budgets", [])
                   if b["budget"] == 256 and (xkey == "windows" or st is not None)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ms=4, label=r["name"],
                        **style[r["name"]])
        ax.axhline(0.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("training windows seen (log)" if xkey == "windows"
                      else "optimizer steps = batches (log; runs whose log has no count left out)")
        ax.set_ylabel("val recovery - last_step at budget 256 (points)")
        ax.set_title("learning curves, validation split (trainer's windows)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    out_png = os.path.join(root, "curves.png")
    fig.savefig(out_png + ".tmp.png", dpi=110)
    os.replace(out_png + ".tmp.png", out_png)
    print("wrote %s" % out_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
