"""TorchServe handler of the TorchServe anchor (scripts/torchserve-anchor.sh): the TorchScript module
that scripts/torchscript_anchor.py traces and checks (the same weights as the seqserve model,
catalogue scores and top 10), behind TorchServe's batching. A request is seqserve's own body,
{"history": [item token, ...], "k": 10}; the answer is {"items": [{"item", "score"}, ...]}.
Histories are left-padded to the model's max_len window, as the traced module reads them."""
import json
import os

import torch


class Handler:
    def __init__(self):
        self.initialized = False

    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        torch.set_num_threads(int(os.environ.get("SEQSERVE_TS_THREADS", "1")))
        self.model = torch.jit.load(os.path.join(d, "model.pt")).eval()
        m = json.load(open(os.path.join(d, "model.json")))
        self.max_len = m["architecture"]["max_len"]
        self.tokens = [l.rstrip("\n") for l in open(os.path.join(d, "items.txt"))]
        self.index = {t: i + 1 for i, t in enumerate(self.tokens)}
        self.initialized = True

    def handle(self, data, context):
        rows = []
        for req in data:
            body = req.get("body") or req.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            hist = [self.index.get(str(t), 0) for t in body["history"]][-self.max_len:]
            rows.append([0] * (self.max_len - len(hist)) + hist)
        with torch.no_grad():
            vals, idx = self.model(torch.tensor(rows, dtype=torch.long))
        out = []
        for v, i in zip(vals.tolist(), idx.tolist()):
            out.append({"items": [{"item": self.tokens[j], "score": s} for j, s in zip(i, v)]})
        return out


_service = Handler()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
