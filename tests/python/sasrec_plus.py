"""The layout of the SASRec in antklen/sasrec-bert4rec-recsys23 (src/models.py; the SASRec+ of
Klenitskiy & Vasilev, RecSys 2023, adapted from an older pmixer/SASRec.pytorch), written here from
its description for tests/import.rs: the same module names (so the same state-dict keys) and the
same forward pass, checked against seqserve's import of its state dict.

  sasrec_plus.py make OUT.pt --items N --d D --blocks B --heads H --maxlen L --seed S
      a model with random weights (padding item row zero), saved as torch.save(state_dict()).
  sasrec_plus.py score OUT.pt HISTORIES_JSON OUT_JSON --heads H
      its prediction for every item 1..n of each history ({"histories": [[item index, ...]]}):
      {"scores": [[...], ...]}, read as its SeqRec module reads it.

Layout: item_emb (n+1 rows, row 0 padding) multiplied by sqrt(d) on input; pos_emb (maxlen rows,
no padding row) indexed by the column of a RIGHT-padded batch, so the oldest item of the window is
row 0; per block: Q = LN1(seqs); seqs = Q + MHA(Q, seqs, seqs) under the causal mask only (padding
sits after the real items, so no real item sees it); seqs = LN2(seqs); seqs = seqs + FFN(seqs) with
FFN = conv2(relu(conv1(.))) of 1x1 Conv1d of width d; padding rows zeroed; a last LayerNorm; all
LayerNorm eps 1e-8. Scores = output at the last real item · item_emb (unscaled, tied).
"""
import json

import sasrec_layout
import torch
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv1 = nn.Conv1d(d, d, kernel_size=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=1)

    def forward(self, x):  # (B, L, d), the residual inside as in that code
        h = self.conv2(torch.relu(self.conv1(x.transpose(-1, -2)))).transpose(-1, -2)
        return h + x


class SASRec(nn.Module):
    def __init__(self, n_items, d, blocks, heads, maxlen):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen, d)
        self.attention_layernorms = nn.ModuleList()
        self.attention_layers = nn.ModuleList()
        self.forward_layernorms = nn.ModuleList()
        self.forward_layers = nn.ModuleList()
        self.last_layernorm = nn.LayerNorm(d, eps=1e-8)
        for _ in range(blocks):
            self.attention_layernorms.append(nn.LayerNorm(d, eps=1e-8))
            self.attention_layers.append(nn.MultiheadAttention(d, heads, 0.0))
            self.forward_layernorms.append(nn.LayerNorm(d, eps=1e-8))
            self.forward_layers.append(FeedForward(d))

    def forward(self, ids):  # (B, L) right-padded item indices -> (B, L, n+1) scores
        B, L = ids.shape
        seqs = self.item_emb(ids) * self.item_emb.embedding_dim**0.5
        seqs = seqs + self.pos_emb(torch.arange(L).unsqueeze(0).expand(B, -1))
        keep = (ids != 0).unsqueeze(-1)
        seqs = seqs * keep
        mask = ~torch.tril(torch.ones((L, L), dtype=torch.bool))
        for i in range(len(self.attention_layers)):
            s = seqs.transpose(0, 1)
            q = self.attention_layernorms[i](s)
            out, _ = self.attention_layers[i](q, s, s, attn_mask=mask)
            seqs = (q + out).transpose(0, 1)
            seqs = self.forward_layers[i](self.forward_layernorms[i](seqs))
            seqs = seqs * keep
        return self.last_layernorm(seqs) @ self.item_emb.weight.T


def make(a):
    torch.manual_seed(a.seed)
    m = SASRec(a.items, a.d, a.blocks, a.heads, a.maxlen)
    sasrec_layout.save_perturbed(m, a.out, [m.item_emb])


def score(a):
    m, maxlen = sasrec_layout.load(a.checkpoint, SASRec, a.heads, 0)
    hs = [h[-maxlen:] for h in json.load(open(a.histories))["histories"]]
    width = max(1, max(len(h) for h in hs))
    ids = torch.tensor([h + [0] * (width - len(h)) for h in hs], dtype=torch.long)
    with torch.no_grad():
        out = m(ids)
    # The output at the last real item; an empty history reads its padding column 0.
    last = ((ids != 0).sum(1) - 1).clamp(min=0)
    scores = out[torch.arange(len(hs)), last][:, 1:]
    json.dump({"scores": scores.tolist()}, open(a.out, "w"))


if __name__ == "__main__":
    sasrec_layout.main({"make": make, "score": score})
