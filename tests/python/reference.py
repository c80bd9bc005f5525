"""Independent PyTorch reference of seqserve's encoder forward pass (see src/model/encoder.rs).

Usage: reference.py MODEL_DIR INPUTS_JSON OUTPUT_JSON
INPUTS_JSON: {"queries": [{"items": [...], "behaviours": [...], "cat": [...], "num": [...]}, ...]}
(items are item indices, most recent last; encoded context as the Rust side encodes it).
Writes {"scores": [[...n_items...], ...]} computed one query at a time (no batching, no padding
beyond the query itself), so batching/padding bugs on the Rust side show up as mismatches.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def forward(m, w, q):
    arch = m["architecture"]
    d, heads = arch["d_model"], arch["n_heads"]
    n_items = arch["n_items"]
    hist = q["items"] or [0]  # empty history = one padding column
    behs = q.get("behaviours") or [0]
    attended = arch.get("padding", "masked") == "attended"
    if attended:  # SASRec's original code: always a max_len window, left-padded
        pad = arch["max_len"] - len(hist)
        hist, behs = [0] * pad + hist, [0] * pad + behs
    items = torch.tensor([hist], dtype=torch.long)
    W = items.shape[1]
    nonpad = items != 0
    eps = arch.get("layer_norm_eps", 1e-5)
    before = torch.cumsum(nonpad.long(), 1)
    if arch.get("positions", "from_oldest") == "from_oldest":
        pos = (before - 1).clamp(min=0)  # real items before each column
    else:
        pos = (nonpad.long().sum(1, keepdim=True) - before).clamp(min=0)  # real items after it
    # SASRec's code multiplies the item embeddings by sqrt(d) on input (not where items are scored).
    x = w["item_emb"][items] * arch.get("item_input_scale", 1.0) + w["pos_emb"][pos]
    if m.get("behaviours"):
        beh = torch.tensor([behs], dtype=torch.long)
        x = x + w["behaviour_emb"][beh]
    if arch.get("embedding_norm", False):
        x = F.layer_norm(x, (d,), w["emb_ln.weight"], w["emb_ln.bias"], eps)
    x = x * nonpad[..., None].float()
    norm = arch.get("norm", "pre")
    post = norm == "post"
    causal = torch.tril(torch.ones(W, W, dtype=torch.bool))
    eye = torch.eye(W, dtype=torch.bool)
    if attended:  # padding keys take part like items: the causal mask only
        mask = causal[None, None]
    else:
        mask = ((causal[None] & nonpad[:, None, :]) | eye[None])[:, None]
    dh = d // heads

    def lin(name, t):
        return t @ w[name + ".weight"].T + w[name + ".bias"]

    def ln(name, t):
        return F.layer_norm(t, (d,), w[name + ".weight"], w[name + ".bias"], eps)

    act = {"gelu": F.gelu, "relu": F.relu}[arch.get("activation", "gelu")]

    for i in range(arch["n_layers"]):
        p = f"blocks.{i}."
        h = x if post else ln(p + "ln1", x)
        split = lambda t: t.view(1, W, heads, dh).transpose(1, 2)
        # SASRec's code: keys and values from the raw stream, queries from LN1(x).
        kv = x if norm == "sasrec" else h
        q_ = split(lin(p + "attn.q", h))
        k_, v_ = (split(lin(p + "attn." + n, kv)) for n in ("k", "v"))
        # Written out by hand (not scaled_dot_product_attention) to be an independent check.
        att = (q_ @ k_.transpose(-1, -2)) / math.sqrt(dh)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        a = (att @ v_).transpose(1, 2).reshape(1, W, d)
        ffn = lambda t: lin(p + "ffn.fc2", act(lin(p + "ffn.fc1", t)))
        if post:
            x = ln(p + "ln1", x + lin(p + "attn.o", a))
            x = ln(p + "ln2", x + ffn(x))
        elif norm == "sasrec":  # the attention residual from LN1(x), the FFN's from LN2 of the sum
            u = ln(p + "ln2", h + lin(p + "attn.o", a))
            x = u + ffn(u)
        else:
            x = x + lin(p + "attn.o", a)
            x = x + ffn(ln(p + "ln2", x))
    y = (x if post else ln("final_ln", x))[:, -1]
    parts = []
    cats = [f for f in m.get("context", []) if f["kind"] == "categorical"]
    for j, f in enumerate(cats):
        idx = torch.tensor([q["cat"][j]], dtype=torch.long)
        if f["encoding"] == "embedding":
            parts.append(w["context." + f["name"]][idx])
        else:
            parts.append(F.one_hot(idx, len(f["values"]) + 1).float())
    if len(q["num"]):
        parts.append(torch.tensor([q["num"]], dtype=torch.float32))
    if arch.get("head", "linear") == "none":
        assert not parts, "a model without a head has no context"
        return (y @ w["item_emb"][1:].T)[0]
    u = torch.cat([y] + parts, 1)
    z = u @ w["head.weight"].T + w["head.bias"]
    return (z @ w["item_emb"][1:].T + w["item_bias"][1:])[0]


def main():
    model_dir, inputs, output = sys.argv[1:4]
    m = json.load(open(f"{model_dir}/model.json"))
    w = load_file(f"{model_dir}/model.safetensors")
    qs = json.load(open(inputs))["queries"]
    with torch.no_grad():
        scores = [forward(m, w, q).tolist() for q in qs]
    json.dump({"scores": scores}, open(output, "w"))


if __name__ == "__main__":
    main()
