#!/usr/bin/env python3
"""Quality/cost table of the predictor variants (scripts/pred_cost_study.sh).

    python3 scripts/pred_cost_table.py DIR

Reads DIR/*.json (`attnpred eval replay` reports, each with last_step and
one predictor method "attnpred") and writes DIR/table.md: per variant the
label, the multiply-adds actually run and the CPU time per (decode step,
query head), the same per token for the whole model (every layer and query
head), and the recovery difference from last_step at each budget with its
95% interval (paired by sequence; bold where it excludes zero).
"""
import glob
import json
import os
import sys


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root = sys.argv[1]
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "*.json"))):
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            print("pred_cost_table.py: %s: %s" % (path, e), file=sys.stderr)
            return 1
        if d.get("format") != "attnpred-replay" and "paired_vs_last_step" not in d:
            continue
        pm = [m for m in d.get("methods", []) if m.get("is_predictor")]
        if len(pm) != 1:
            continue
        m = pm[0]
        model = d.get("model", {})
        per_token = model.get("n_layer", 0) * model.get("n_head", 0)
        cfg = d.get("config", {})
        diffs = {p["budget"]: p for p in d.get("paired_vs_last_step", [])
                 if p["method"] == m["name"]}
        rows.append(dict(name=os.path.splitext(os.path.basename(path))[0], label=m["label"],
                         source=m.get("source", ""), run=m["run_macs_per_step_head"],
                         naive=m["naive_macs_per_step_head"], us=m["us_per_step_head"],
                         per_token=per_token, diffs=diffs,
                         stride=cfg.get("pred_stride", 1), per_kv=cfg.get("pred_per_kv", False)))
    if not rows:
        print("pred_cost_table.py: no replay report with one predictor in %s" % root,
              file=sys.stderr)
        return 1
    budgets = sorted({b for r in rows for b in r["diffs"]})
    rows.sort(key=lambda r: -r["run"])
    head = ["variant", "method", "MMAC full CNN", "MMAC run / (step, head)", "µs / (step, head)",
            "ms / token (model)"] + ["%d: diff vs last_step [95%% CI]" % b for b in budgets]
    out = ["| " + " | ".join(head) + " |",
           "|---|---|" + "--:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["name"], r["label"], "%.1f" % (r["naive"] / 1e6), "%.2f" % (r["run"] / 1e6), "%.1f" % r["us"],
                 "%.1f" % (r["us"] * r["per_token"] / 1e3)]
        for b in budgets:
            p = r["diffs"].get(b)
            if not p:
                cells.append("–")
                continue
            s = "%+.2f [%+.2f, %+.2f]" % (100 * p["recovery_diff"], 100 * p["ci95_lo"],
                                          100 * p["ci95_hi"])
            if p["ci95_lo"] > 0 or p["ci95_hi"] < 0:
                s = "**" + s + "**"
            cells.append(s)
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("MMAC and µs per (decode step, query head) as the replay measures them (one thread, "
               "incremental CNN); \"full CNN\" is the whole CNN on each window, what the method "
               "as published computes; ms / token multiplies by every layer and query head of the "
               "model. Differences in recovery points from last_step, paired by test sequence "
               "(first 24 decode steps); bold where the interval excludes zero.")
    dst = os.path.join(root, "table.md")
    with open(dst + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(dst + ".tmp", dst)
    print("wrote %s" % dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
