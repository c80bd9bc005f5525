"""The raw TorchScript anchor of scripts/bench.sh: the same weights as a batched PyTorch module,
traced with torch.jit.trace, scoring the whole catalogue and taking the top 10, at batch 32 with no
HTTP. This is what a team would deploy in TorchServe; it reads every history in a max_len window
(SASRec's usual deployment).

Usage: torchscript_anchor.py MODEL_DIR [SECONDS] [THREADS] [SAVE_PATH]
Prints one line: `torchscript batch 32: N seq/s (THREADS threads)`. With SAVE_PATH, the checked
module is also saved there (scripts/torchserve-anchor.sh serves it with TorchServe).

Before timing, its scores are checked against tests/python/reference.py (the per-query reference
that tests hold seqserve's encoder to): an anchor that computed something else would be no anchor.
Models with context features or attended padding are refused (the shipped Beauty models have none).
"""
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import reference  # noqa: E402


class Encoder(torch.nn.Module):
    def __init__(self, m, w):
        super().__init__()
        a = m["architecture"]
        if m.get("context") or a.get("padding", "masked") == "attended":
            sys.exit("torchscript_anchor: models with context or attended padding are not supported")
        self.d, self.heads = a["d_model"], a["n_heads"]
        self.layers = a["n_layers"]
        self.post = a.get("norm", "pre") == "post"
        self.from_oldest = a.get("positions", "from_oldest") == "from_oldest"
        self.eps = a.get("layer_norm_eps", 1e-5)
        self.gelu = a.get("activation", "gelu") == "gelu"
        self.emb_norm = a.get("embedding_norm", False)
        self.head = a.get("head", "linear") != "none"
        self.w = {k: v.contiguous() for k, v in w.items()}
        self.items = self.w["item_emb"][1:].contiguous()
        self.bias = self.w["item_bias"][1:].contiguous() if self.head else None

    def forward(self, items):
        w, d, W = self.w, self.d, items.shape[1]
        nonpad = items != 0
        before = torch.cumsum(nonpad.long(), 1)
        if self.from_oldest:
            pos = (before - 1).clamp(min=0)
        else:
            pos = (nonpad.long().sum(1, keepdim=True) - before).clamp(min=0)
        x = w["item_emb"][items] + w["pos_emb"][pos]
        if self.emb_norm:
            x = F.layer_norm(x, (d,), w["emb_ln.weight"], w["emb_ln.bias"], self.eps)
        x = x * nonpad[..., None].float()
        causal = torch.tril(torch.ones(W, W, dtype=torch.bool))
        eye = torch.eye(W, dtype=torch.bool)
        mask = ((causal[None] & nonpad[:, None, :]) | eye[None])[:, None]
        dh = d // self.heads
        B = items.shape[0]

        def lin(name, t):
            return F.linear(t, w[name + ".weight"], w[name + ".bias"])

        def ln(name, t):
            return F.layer_norm(t, (d,), w[name + ".weight"], w[name + ".bias"], self.eps)

        for i in range(self.layers):
            p = f"blocks.{i}."
            h = x if self.post else ln(p + "ln1", x)
            q, k, v = (lin(p + "attn." + n, h).view(B, W, self.heads, dh).transpose(1, 2)
                       for n in ("q", "k", "v"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).reshape(B, W, d)
            act = F.gelu if self.gelu else F.relu
            ffn = lambda t: lin(p + "ffn.fc2", act(lin(p + "ffn.fc1", t)))  # noqa: E731
            if self.post:
                x = ln(p + "ln1", x + lin(p + "attn.o", a))
                x = ln(p + "ln2", x + ffn(x))
            else:
                x = x + lin(p + "attn.o", a)
                x = x + ffn(ln(p + "ln2", x))
        y = x[:, -1] if self.post else ln("final_ln", x[:, -1])
        if self.head:
            y = lin("head", y)
            scores = torch.addmm(self.bias, y, self.items.T)
        else:
            scores = y @ self.items.T
        return torch.topk(scores, 10, dim=1)


def main():
    model_dir = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else os.cpu_count()
    torch.set_num_threads(threads)
    m = json.load(open(f"{model_dir}/model.json"))
    w = load_file(f"{model_dir}/model.safetensors")
    max_len, n = m["architecture"]["max_len"], m["architecture"]["n_items"]
    rng = random.Random(7)
    # As scripts/bench.sh's histories: random catalogue items, lengths 1..=max_len.
    hists = [[1 + rng.randrange(n) for _ in range(1 + rng.randrange(max_len))] for _ in range(512)]

    def window(batch):  # left-padded to the max_len window
        return torch.tensor([[0] * (max_len - len(h)) + h for h in batch], dtype=torch.long)

    enc = Encoder(m, w).eval()
    with torch.no_grad():
        traced = torch.jit.trace(enc, window(hists[:32]), check_trace=False)
        traced = torch.jit.freeze(traced.eval()) if hasattr(torch.jit, "freeze") else traced
        vals, idx = traced(window(hists[:32]))
        for r in range(8):
            ref = reference.forward(m, w, {"items": hists[r], "num": [], "cat": []})
            rv, ri = torch.topk(ref, 10)
            if (rv - vals[r]).abs().max() > 1e-4 or not torch.equal(ri, idx[r]):
                sys.exit(f"torchscript_anchor: history {r} scores differ from reference.py")
        if len(sys.argv) > 4:
            traced.save(sys.argv[4])
        for _ in range(5):
            traced(window(hists[:32]))
        t0, done, i = time.time(), 0, 0
        while time.time() - t0 < secs:
            batch = [hists[(i + j) % len(hists)] for j in range(32)]
            traced(window(batch))
            done += 32
            i += 32
        rate = done / (time.time() - t0)
    print(f"torchscript batch 32: {rate:.0f} seq/s ({threads} threads)")


if __name__ == "__main__":
    main()
