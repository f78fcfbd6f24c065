#!/usr/bin/env python3
"""Table of the predictor transfer study (scripts/transfer_study.sh).

    python3 scripts/transfer_table.py DIR

Reads DIR/smollm2.json and DIR/gemma3.json (`attnpred eval replay` reports
of each model's trace with the predictors smollm2, gemma3 and
smollm2_shipped) and writes DIR/table.md: per trace and method, recovery at
each budget and its paired-by-sequence difference from last_step with the
95% interval (bold where the interval excludes zero), each predictor
labelled own model or transfer.
"""
import json
import os
import sys

TRACES = [("smollm2", "SmolLM2-135M-Instruct (traces/quick.h5)"),
          ("gemma3", "Gemma 3 270M (traces/gemma3-270m-quick.h5)")]
METHODS = ["oracle", "last_step", "quest", "smollm2", "gemma3", "smollm2_shipped"]
TRAINED_ON = {"smollm2": "smollm2", "smollm2_shipped": "smollm2", "gemma3": "gemma3"}


def fmt_diff(p):
    s = "%+.2f [%+.2f, %+.2f]" % (100 * p["recovery_diff"], 100 * p["ci95_lo"], 100 * p["ci95_hi"])
    excl = p["ci95_lo"] > 0 or p["ci95_hi"] < 0
    return "**%s**" % s if excl else s


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root = sys.argv[1]
    lines = ["# Predictor transfer across models", "",
             "Recovery (%) of each method on each model's trace; below it, the difference from "
             "last_step in points with its 95% interval (bootstrap over sequences, paired; bold "
             "where it excludes zero). `smollm2` and `gemma3` are the predictors the two main "
             "jobs trained (same recipe and data size, each on its own model's quick trace); "
             "`smollm2_shipped` is the committed SmolLM2 predictor (about 12x the windows). "
             "Made by `bash scripts/transfer_study.sh`.", ""]
    for key, label in TRACES:
        path = os.path.join(root, key + ".json")
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            print("transfer_table.py: %s: %s" % (path, e), file=sys.stderr)
            return 1
        budgets = sorted({r["budget"] for r in d["results"]})
        rec = {(r["method"], r["budget"]): r["recovery"] for r in d["results"]}
        paired = {(p["method"], p["budget"]): p for p in d.get("paired_vs_last_step", [])}
        sel = d.get("selection_layers", {})
        lines.append("## %s" % label)
        lines.append("")
        if sel.get("note"):
            lines.append("%s; %d sequences, %d decode steps." % (sel["note"], d.get("n_seq", 0),
                                                               d.get("n_decode_steps", 0)))
            lines.append("")
        lines.append("| method | trained on | " + " | ".join("B=%d" % b for b in budgets) + " |")
        lines.append("|:--|:--|" + "--:|" * len(budgets))
        for m in METHODS:
            if not any((m, b) in rec for b in budgets):
                continue
            on = TRAINED_ON.get(m)
            tag = "-" if on is None else ("own model" if on == key else "**transfer** (%s)" % on)
            cells = []
            for b in budgets:
                c = "%.2f" % (100 * rec[(m, b)]) if (m, b) in rec else "-"
                if (m, b) in paired and m != "last_step":
                    c += "<br>" + fmt_diff(paired[(m, b)])
                cells.append(c)
            lines.append("| `%s` | %s | %s |" % (m, tag, " | ".join(cells)))
        lines.append("")
    out = os.path.join(root, "table.md")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
