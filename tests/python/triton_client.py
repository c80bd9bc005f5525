"""NVIDIA's tritonclient (a KServe v2 client nobody here wrote) against a running seqserve.

Usage: triton_client.py BASE_URL MODEL VERSION
Run by tests/v2.rs with the python of `scripts/ops-tools.sh triton`. Checks liveness, readiness and
model metadata through the client, then ranks a batch of histories of different lengths (a numpy
object array padded with "", as the README documents) with a context per request, and compares
`items` and `scores` with what POST /recommend answers for each history (fetched with urllib).
Prints one JSON line of what it saw; any mismatch is an AssertionError (non-zero exit).
"""
import json
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

K = 6
HISTORIES = [["i3", "i9", "i4"], ["i12"], [], ["i7", "zz-unknown", "i21", "i30", "i2"]]
CONTEXTS = [{"gender": "F", "device": "web", "hour": 20}, {}, {"device": "ios"}, {"hour": 7.5}]


def recommend(base, model, history, context):
    body = json.dumps({"model": model, "history": history, "context": context, "k": K}).encode()
    req = urllib.request.Request(base + "/recommend", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def padded(histories):
    width = max(len(h) for h in histories)
    arr = np.full((len(histories), width), "", dtype=np.object_)
    for r, h in enumerate(histories):
        arr[r, : len(h)] = h
    return arr


def inputs(histories, contexts, binary=False):
    history = padded(histories)
    h = httpclient.InferInput("history", list(history.shape), "BYTES")
    h.set_data_from_numpy(history, binary_data=binary)
    ctx = np.array([json.dumps(c) for c in contexts], dtype=np.object_)
    c = httpclient.InferInput("context", list(ctx.shape), "BYTES")
    c.set_data_from_numpy(ctx, binary_data=False)
    return [h, c]


def check_against_recommend(result, expected):
    items, scores = result.as_numpy("items"), result.as_numpy("scores")
    assert items.shape == (len(expected), K), items.shape
    assert scores.dtype == np.float32 and scores.shape == items.shape, (scores.dtype, scores.shape)
    for row, want in enumerate(expected):
        got_items = [i.decode() if isinstance(i, bytes) else i for i in items[row]]
        assert got_items == [x["item"] for x in want["items"]], (row, got_items, want)
        want_scores = np.array([x["score"] for x in want["items"]], dtype=np.float32)
        # One /recommend is a batch of one; this call is a batch of four, padded to its longest
        # history, and the kernels' summation order differs with the batch's shape: the last bits
        # of a score may differ (as between /recommend and the offline CLI, tests/serve.rs).
        np.testing.assert_allclose(scores[row], want_scores, rtol=0, atol=1e-5)


def main():
    base, model, version = sys.argv[1], sys.argv[2], sys.argv[3]
    client = httpclient.InferenceServerClient(url=base.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, model_version=version)
    meta = client.get_model_metadata(model)
    assert meta["name"] == model, meta
    assert {t["name"] for t in meta["inputs"]} >= {"history", "context"}, meta
    assert {t["name"]: t["datatype"] for t in meta["outputs"]} == {"items": "BYTES", "scores": "FP32"}, meta

    expected = [recommend(base, model, h, c) for h, c in zip(HISTORIES, CONTEXTS)]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("items", "scores")]
    result = client.infer(model, inputs(HISTORIES, CONTEXTS), outputs=outputs,
                          request_id="batch-1", parameters={"k": K})
    response = result.get_response()
    assert response["id"] == "batch-1", response
    assert response["model_name"] == model and response["model_version"] == version, response
    check_against_recommend(result, expected)

    # The client's defaults: no outputs named (it then asks for binary outputs), an explicit
    # version. The answer is JSON all the same, which the client reads.
    result = client.infer(model, inputs(HISTORIES, CONTEXTS), model_version=version,
                          parameters={"k": K})
    check_against_recommend(result, expected)

    # Binary input tensors (the client's default) are refused with a message saying what to do.
    try:
        client.infer(model, inputs(HISTORIES, CONTEXTS, binary=True), outputs=outputs)
        raise AssertionError("binary tensor data was accepted")
    except InferenceServerException as e:
        binary_refusal = {"status": e.status(), "message": e.message()}
    assert "binary_data=False" in binary_refusal["message"], binary_refusal

    # A malformed tensor: the shape says 3 elements, the data holds 2.
    bad = httpclient.InferInput("history", [2], "BYTES")
    bad.set_data_from_numpy(np.array(["i1", "i2"], dtype=np.object_), binary_data=False)
    bad.set_shape([3])
    try:
        client.infer(model, [bad], outputs=outputs)
        raise AssertionError("a wrong shape was accepted")
    except InferenceServerException as e:
        shape_refusal = {"status": e.status(), "message": e.message()}
    assert "input history" in shape_refusal["message"], shape_refusal

    print(json.dumps({"rows": len(expected), "k": K, "compared": len(expected) * K,
                      "binary_refusal": binary_refusal, "shape_refusal": shape_refusal}))


if __name__ == "__main__":
    main()
