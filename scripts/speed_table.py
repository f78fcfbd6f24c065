#!/usr/bin/env python3
"""Tables of scripts/speed_study.sh: runs/speed/{tasks,live}-NAME.json -> DIR/table.md.

    python3 scripts/speed_table.py DIR

Task suite: per variant and budget, tokens/s of attnpred, last_step and full KV
in the same run, attnpred / last_step and attnpred / full, attnpred's
agreement and KL with their intervals, and score ms per token. bench-live: its
rows (tok/s against full KV in the same process, agreement, predictor and step
ms per token).
"""
import glob
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def ci(x, lo, hi, scale, fmt):
    return (fmt % (scale * x)) + " [" + (fmt % (scale * lo)) + ", " + (fmt % (scale * hi)) + "]"


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root = sys.argv[1]
    out = ["### Quick task suite (`attnpred eval tasks --quick`, 12 samples)", "",
           "| variant | budget | attnpred tok/s | last_step tok/s | full KV tok/s | vs last_step | vs full | "
           "agreement % | KL | score ms / token |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for path in sorted(glob.glob(os.path.join(root, "tasks-*.json"))):
        name = os.path.basename(path)[len("tasks-"):-len(".json")]
        d = load(path)
        rows = d["summary"]["overall"]
        full = next(r for r in rows if r["method"] == "full")
        for r in rows:
            if r["method"] != "attnpred":
                continue
            ls = next(x for x in rows if x["method"] == "last_step" and x["budget"] == r["budget"])
            out.append("| %s | %d | %.1f | %.1f | %.1f | %.2fx | %.2fx | %s | %s | %.1f |" % (
                name, r["budget"], r["tokens_per_s"], ls["tokens_per_s"], full["tokens_per_s"],
                r["tokens_per_s"] / ls["tokens_per_s"], r["tokens_per_s"] / full["tokens_per_s"],
                ci(r["agreement"], r["agreement_ci95_lo"], r["agreement_ci95_hi"], 100, "%.1f"),
                ci(r["kl"], r["kl_ci95_lo"], r["kl_ci95_hi"], 1, "%.3f"),
                r["score_ms_per_token"]))
    out += ["", "### bench-live (budget 512, 64 generated tokens, plain text)", "",
            "| variant | ctx | method | tok/s | full KV tok/s | speedup | agreement % | predictor ms | step ms |",
            "|---|--:|---|--:|--:|--:|--:|--:|--:|"]
    for path in sorted(glob.glob(os.path.join(root, "live-*.json"))):
        name = os.path.basename(path)[len("live-"):-len(".json")]
        for r in load(path)["rows"]:
            out.append("| %s | %d | %s | %.1f | %.1f | %.2fx | %.1f | %.2f | %.2f |" % (
                name, r["ctx"], r["method"], r["tps"], r["full_tps"], r["speedup"],
                100 * r["agreement"], r["predictor_ms"], r["step_ms"]))
    dst = os.path.join(root, "table.md")
    with open(dst + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(dst + ".tmp", dst)
    print("wrote %s" % dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
