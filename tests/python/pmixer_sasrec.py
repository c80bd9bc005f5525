"""The layout of pmixer/SASRec.pytorch's SASRec (python/model.py, trained with --norm_first), written
here from its description for tests/import.rs: the same module names (so the same state-dict keys)
and the same forward pass, checked against seqserve's import of its state dict.

  pmixer_sasrec.py make OUT.pt --items N --d D --blocks B --heads H --maxlen L --seed S
      a model with random weights (padding rows zero, as its training keeps them), saved as
      torch.save(model.state_dict()): what its main.py writes.
  pmixer_sasrec.py score OUT.pt HISTORIES_JSON OUT_JSON --heads H
      its predict() for every item 1..n of each history ({"histories": [[item index, ...]]}):
      {"scores": [[...], ...]}.
  pmixer_sasrec.py edit IN.pt OUT.pt [--drop KEY] [--add KEY] [--narrow KEY]
      a damaged copy of a state dict: a key removed, one more key, a tensor with half its columns.
  pmixer_sasrec.py evil OUT.pt MARKER
      a checkpoint whose unpickling would run `touch MARKER` (for the importer's refusal test).

Layout: item_emb (n+1 rows, row 0 padding) scaled by sqrt(d) on input; pos_emb (maxlen+1 rows,
row 0 padding) indexed by the column (1..maxlen) of a left-padded window of maxlen columns, 0 on
padding; per block: x = LN(seqs); seqs += MHA(x, x, x) under the causal mask only (padding is not
masked); seqs += FFN(LN(seqs)) with FFN = conv2(relu(conv1(.))) of 1x1 Conv1d; then a last
LayerNorm; scores = output at the last column · item_emb (unscaled). LayerNorm eps 1e-8.
"""
import json

import sasrec_layout
import torch
from torch import nn


class PointWiseFeedForward(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv1 = nn.Conv1d(d, d, kernel_size=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(d, d, kernel_size=1)

    def forward(self, x):  # (B, L, d)
        return self.conv2(self.relu(self.conv1(x.transpose(-1, -2)))).transpose(-1, -2)


class SASRec(nn.Module):
    def __init__(self, n_items, d, blocks, heads, maxlen):
        super().__init__()
        self.maxlen = maxlen
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen + 1, d, padding_idx=0)
        self.attention_layernorms = nn.ModuleList()
        self.attention_layers = nn.ModuleList()
        self.forward_layernorms = nn.ModuleList()
        self.forward_layers = nn.ModuleList()
        self.last_layernorm = nn.LayerNorm(d, eps=1e-8)
        for _ in range(blocks):
            self.attention_layernorms.append(nn.LayerNorm(d, eps=1e-8))
            self.attention_layers.append(nn.MultiheadAttention(d, heads, 0.0))
            self.forward_layernorms.append(nn.LayerNorm(d, eps=1e-8))
            self.forward_layers.append(PointWiseFeedForward(d))

    def log2feats(self, log_seqs):  # (B, maxlen) left-padded item indices
        seqs = self.item_emb(log_seqs) * self.item_emb.embedding_dim ** 0.5
        B, L = log_seqs.shape
        poss = torch.arange(1, L + 1).unsqueeze(0).expand(B, -1) * (log_seqs != 0)
        seqs = seqs + self.pos_emb(poss)
        mask = ~torch.tril(torch.ones((L, L), dtype=torch.bool))
        for i in range(len(self.attention_layers)):
            seqs = seqs.transpose(0, 1)
            x = self.attention_layernorms[i](seqs)
            out, _ = self.attention_layers[i](x, x, x, attn_mask=mask)
            seqs = (seqs + out).transpose(0, 1)
            seqs = seqs + self.forward_layers[i](self.forward_layernorms[i](seqs))
        return self.last_layernorm(seqs)

    def predict(self, log_seqs):
        final = self.log2feats(log_seqs)[:, -1, :]
        return final @ self.item_emb.weight[1:].T


def make(a):
    torch.manual_seed(a.seed)
    m = SASRec(a.items, a.d, a.blocks, a.heads, a.maxlen)
    sasrec_layout.save_perturbed(m, a.out, [m.item_emb, m.pos_emb])


def score(a):
    m, maxlen = sasrec_layout.load(a.checkpoint, SASRec, a.heads, 1)
    rows = []
    for h in json.load(open(a.histories))["histories"]:
        h = h[-maxlen:]
        rows.append([0] * (maxlen - len(h)) + h)
    with torch.no_grad():
        scores = m.predict(torch.tensor(rows, dtype=torch.long))
    json.dump({"scores": scores.tolist()}, open(a.out, "w"))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def edit(a):
    state = torch.load(a.checkpoint, weights_only=True)
    for k in a.drop or []:
        del state[k]
    for k in a.add or []:
        state[k] = torch.zeros(3)
    for k in a.narrow or []:
        state[k] = state[k][:, : state[k].shape[1] // 2].clone()
    torch.save(state, a.out)


def evil(a):
    torch.save({"item_emb.weight": torch.zeros(2, 2), "x": Evil(a.marker)}, a.out)


def more_commands(sub):
    s = sub.add_parser("edit")
    s.add_argument("checkpoint")
    s.add_argument("out")
    s.add_argument("--drop", action="append")
    s.add_argument("--add", action="append")
    s.add_argument("--narrow", action="append")
    s = sub.add_parser("evil")
    s.add_argument("out")
    s.add_argument("marker")


if __name__ == "__main__":
    sasrec_layout.main({"make": make, "score": score, "edit": edit, "evil": evil}, more_commands)
