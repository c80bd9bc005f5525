#!/usr/bin/env python3
"""Serve one model on two devices and compare what /recommend answers (stdlib only).

    compare_devices.py SEQSERVE MODEL_DIR HOLDOUT.jsonl [--cases N] [--k K] [--devices cpu,cuda:0]

Starts `SEQSERVE serve --model MODEL_DIR --device D` once per device (each on its own port, both at
once), sends the first N holdout cases (history, and context where the case has one) to each as
/recommend/batch requests of 50, and compares the answers case by case: the same top k in the same
order, and the largest score difference between the two lists (at most 1e-4 for each item; a
different item at a place counts only where the two scores there differ by more than that: a
near-tie may fall either way on another device's arithmetic). Exits 1 on a real difference, 2 when a server does not start.
Written for `scripts/cuda-check.sh` (CPU against CUDA); any two devices work.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

TIE = 1e-4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start(seqserve, model, device, log_dir):
    port = free_port()
    log = open(os.path.join(log_dir, f"serve-{device.replace(':', '')}.log"), "w")
    proc = subprocess.Popen(
        [seqserve, "serve", "--model", model, "--device", device, "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    started = time.time()
    while time.time() - started < 180:
        if proc.poll() is not None:
            return proc, port, None
        if ready(port):
            return proc, port, time.time() - started
        time.sleep(0.2)
    return proc, port, None


def cases(path, n):
    out = []
    with open(path) as f:
        for line in f:
            c = json.loads(line)
            if "history" not in c:
                continue  # the provenance line
            req = {"history": c["history"]}
            if c.get("context"):
                req["context"] = c["context"]
            out.append(req)
            if len(out) == n:
                break
    return out


def compare(a, b, k):
    """(places where the top k differ beyond a tie, largest score difference of an item both hold).

    A place holds a tie when the two lists' scores at that place are within TIE of each other:
    then another device's arithmetic may put either of the tied items there. A real swap shows
    either there or as a score difference of the same item between the devices."""
    ia, ib = a["items"][:k], b["items"][:k]
    real = sum(
        1
        for x, y in zip(ia, ib)
        if x["item"] != y["item"] and abs(x["score"] - y["score"]) > TIE
    ) + abs(len(ia) - len(ib))
    sb = {x["item"]: x["score"] for x in b["items"]}
    max_d = max((abs(x["score"] - sb[x["item"]]) for x in a["items"] if x["item"] in sb),
                default=0.0)
    return real, max_d


def main():
    p = argparse.ArgumentParser()
    p.add_argument("seqserve")
    p.add_argument("model")
    p.add_argument("holdout")
    p.add_argument("--cases", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--devices", default="cpu,cuda:0")
    p.add_argument("--logs", default=".")
    a = p.parse_args()
    devices = a.devices.split(",")
    reqs = cases(a.holdout, a.cases)
    servers = [start(a.seqserve, a.model, d, a.logs) for d in devices]
    try:
        for d, (proc, port, secs) in zip(devices, servers):
            if secs is None:
                print(f"[compare] {d}: the server never became ready (log in {a.logs})")
                return 2
            print(f"[compare] {d}: ready after {secs:.1f} s")
        answers = []
        for d, (_, port, _) in zip(devices, servers):
            got, t0 = [], time.time()
            for i in range(0, len(reqs), 50):
                body = {"requests": [dict(r, k=a.k) for r in reqs[i:i + 50]]}
                got += post(port, "/recommend/batch", body)["results"]
            print(f"[compare] {d}: {len(got)} answers in {time.time() - t0:.2f} s")
            answers.append(got)
        diffs, worst, same = 0, 0.0, 0
        for x, y in zip(*answers):
            real, max_d = compare(x, y, a.k)
            diffs += real > 0 or max_d > TIE
            same += [i["item"] for i in x["items"]] == [i["item"] for i in y["items"]]
            worst = max(worst, max_d)
        print(f"[compare] {a.model}: {len(reqs)} cases, top {a.k} identical in {same}, "
              f"different beyond ties in {diffs}; max |score difference| {worst:.2e}")
        return 1 if diffs else 0
    finally:
        for proc, _, _ in servers:
            proc.terminate()
        for proc, _, _ in servers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
