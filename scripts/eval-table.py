#!/usr/bin/env python3
"""Prints the README's comparison tables from `seqserve evaluate --json FILE` output.

Usage: scripts/eval-table.py REPORT.json [METRIC@K ...]
(default metrics: f1@5 f1@10 f1@20 ndcg@10 hr@10; the paired-test table covers those the report compared)
"""
import json
import sys


def p(x):
    return f"{x:.2g}"


def main():
    report = json.load(open(sys.argv[1]))
    metrics = sys.argv[2:] or ["f1@5", "f1@10", "f1@20", "ndcg@10", "hr@10"]
    metrics = [m for m in metrics if m in report["models"][0]["metrics"]]
    print("| model | " + " | ".join(m.upper() for m in metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for m in report["models"]:
        cells = []
        for k in metrics:
            ci = m["metrics"][k]
            cells.append(f"{ci['mean']:.4f} [{ci['lower']:.4f}, {ci['upper']:.4f}]")
        print(f"| `{m['model']}` | " + " | ".join(cells) + " |")
    rows = [c for c in report["comparisons"] if c["metric"] in metrics]
    if not rows:
        return
    print()
    print("| paired test (a − b) | diff [95% CI] | t-test p | Wilcoxon p | randomization p | Cohen's d |")
    print("|---|---|---|---|---|---|")
    for c in rows:
        t = c["test"]
        ci = t["diff_ci"]
        print(
            f"| {c['a']} − {c['b']}, {c['metric']} | {ci['mean']:+.5f} [{ci['lower']:+.5f}, {ci['upper']:+.5f}] "
            f"| {p(c['holm_t_p_value'])} | {p(c['holm_wilcoxon_p_value'])} | {p(c['holm_randomization_p_value'])} "
            f"| {t['cohens_d']:.3f} |"
        )


if __name__ == "__main__":
    main()
