"""What the scripts of the two public SASRec layouts share (pmixer_sasrec.py, sasrec_plus.py): a
model with random weights saved as its state dict, a model rebuilt from a saved state dict, and
their `make` / `score` command line. Each script keeps its own modules and forward pass."""
import argparse

import torch


def save_perturbed(m, out, padding):
    """Every parameter moved away from its initial value (LayerNorm gains and biases included), so
    that a wrong mapping of any of them shows; the `padding` embeddings' row 0 zero, as training
    keeps it. Saved as torch.save(state_dict()), what those codes write."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for emb in padding:
            emb.weight[0] = 0
    torch.save(m.state_dict(), out)


def load(checkpoint, model, heads, position_padding_rows):
    """The model of `checkpoint` rebuilt with `model(n_items, d, blocks, heads, maxlen)`, in eval
    mode, and its maxlen (the position table's rows less its padding rows)."""
    state = torch.load(checkpoint, weights_only=True)
    n_items, d = state["item_emb.weight"].shape
    maxlen = state["pos_emb.weight"].shape[0] - position_padding_rows
    blocks = len({k.split(".")[1] for k in state if k.startswith("attention_layers.")})
    m = model(n_items - 1, d, blocks, heads, maxlen)
    m.load_state_dict(state)
    m.eval()
    return m, maxlen


def main(commands, more=None):
    """`make OUT --items --d --blocks --heads --maxlen --seed` and `score CHECKPOINT HISTORIES OUT
    --heads`, plus the subcommands `more(subparsers)` adds; runs commands[name](args)."""
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("make")
    s.add_argument("out")
    for k in ("items", "d", "blocks", "heads", "maxlen", "seed"):
        s.add_argument(f"--{k}", type=int, required=True)
    s = sub.add_parser("score")
    s.add_argument("checkpoint")
    s.add_argument("histories")
    s.add_argument("out")
    s.add_argument("--heads", type=int, required=True)
    if more:
        more(sub)
    a = p.parse_args()
    commands[a.cmd](a)
