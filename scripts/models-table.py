#!/usr/bin/env python3
"""Prints the README's shipped-model table from the manifests in models/ (nothing typed by hand).

Usage: scripts/models-table.py [MODEL_DIR ...]   (default: the leave-one-out service models)
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT = ["beauty-2l", "beauty-1l", "ml1m-ctx", "ml1m-1l"]


def row(name):
    d = name if os.path.isdir(name) else os.path.join(ROOT, "models", name)
    m = json.load(open(os.path.join(d, "model.json")))
    a, t, x = m["architecture"], m["training"], m["metrics"]
    r = t.get("recipe") or {}
    loss = r.get("loss", {})
    loss_s = "full" if loss.get("kind", "full") == "full" else f"sampled {loss.get('negatives')}"
    if loss.get("exclude_history"):
        loss_s += " without the user's items"
    ctx = ", ".join(f["name"] for f in m.get("context", [])) or "none"
    te, va = x["test"], x["validation"]
    return (
        f"| `{m['name']}` | {a['n_layers']} | {a['max_len']} | {ctx} | {r.get('targets', 'all')}, {loss_s} "
        f"| {va['hr@10']:.4f} / {va['ndcg@10']:.4f} | {te['hr@10']:.4f} | {te['ndcg@10']:.4f} "
        f"| {te['hr@20']:.4f} | {te['ndcg@20']:.4f} | {t['best_epoch']}/{t['epochs_run']} of {t['max_epochs']} "
        f"| {t['seconds_per_epoch']:.1f} | {t['wall_time_seconds'] / 60:.0f} min |"
    )


def main():
    names = sys.argv[1:] or DEFAULT
    print(
        "| model | layers | max_len | context | targets, loss | valid HR@10 / NDCG@10 | test HR@10 | NDCG@10 "
        "| HR@20 | NDCG@20 | best/run epochs | s/epoch (train) | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        print(row(n))


if __name__ == "__main__":
    main()
