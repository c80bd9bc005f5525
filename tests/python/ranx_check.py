"""Independent metrics: ranx computes mean P/R/F1/HR/NDCG/MRR/MAP@k for a run and qrels.

Usage: ranx_check.py INPUT_JSON OUTPUT_JSON
INPUT_JSON: {"ks": [5, 10], "cases": [{"ranked": [item, ...best first], "relevant": [item, ...]}]}
OUTPUT_JSON: {"precision@5": mean, ...}
"""
import json
import sys

from ranx import Qrels, Run, evaluate

NAMES = {"precision": "precision", "recall": "recall", "f1": "f1", "hr": "hit_rate",
         "ndcg": "ndcg", "mrr": "mrr", "map": "map"}


def main():
    data = json.load(open(sys.argv[1]))
    qrels, run = {}, {}
    for i, c in enumerate(data["cases"]):
        q = f"q{i}"
        qrels[q] = {f"d{d}": 1 for d in c["relevant"]}
        n = len(c["ranked"])
        # Strictly decreasing scores: the order is the ranking, no ties for ranx to break.
        run[q] = {f"d{d}": float(n - r) for r, d in enumerate(c["ranked"])}
    metrics = [f"{ranx}@{k}" for k in data["ks"] for ranx in NAMES.values()]
    res = evaluate(Qrels.from_dict(qrels), Run.from_dict(run), metrics, make_comparable=True)
    out = {}
    for k in data["ks"]:
        for ours, theirs in NAMES.items():
            out[f"{ours}@{k}"] = float(res[f"{theirs}@{k}"])
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
