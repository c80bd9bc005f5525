#!/usr/bin/env python3
"""A small seqserve client (Python standard library only).

    from client import Seqserve
    s = Seqserve("http://localhost:8080")
    s.recommend(["12", "45", "77"], k=5)            # -> {"model", "version", "items": [...], ...}
    s.recommend([...], model="beauty", user="u42")  # an A/B split, sticky per user
    s.models()                                      # GET /models
    Seqserve("http://localhost:9090", token="...").evaluate(cases, models=["beauty-1l", "beauty-2l"])

Errors come back as SeqserveError with the server's status, code and message; 429 and 503 are
retried with back-off (honouring Retry-After), everything else is raised at once.

Run as a script for a demo: python3 examples/client.py http://localhost:8080 12 45 77
"""
import json
import sys
import time
import urllib.error
import urllib.request


class SeqserveError(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Seqserve:
    def __init__(self, base_url, token=None, timeout=10.0, retries=3):
        self.base = base_url.rstrip("/")
        self.token, self.timeout, self.retries = token, timeout, retries

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base + path, data=data, method=method)
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if self.token:
                req.add_header("Authorization", "Bearer " + self.token)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.load(r)
            except urllib.error.HTTPError as e:
                try:
                    err = json.load(e)
                except ValueError:
                    err = {}
                if e.code in (429, 503) and attempt < self.retries:
                    time.sleep(float(e.headers.get("Retry-After") or 0.1 * 2 ** attempt))
                    continue
                raise SeqserveError(e.code, err.get("code", "?"), err.get("error", e.reason)) from None

    def recommend(self, history, k=10, model=None, version=None, user=None, **fields):
        body = {"history": list(history), "k": k, **fields}
        for key, value in (("model", model), ("version", version), ("user", user)):
            if value is not None:
                body[key] = value
        return self._call("POST", "/recommend", body)

    def recommend_batch(self, requests):
        return self._call("POST", "/recommend/batch", {"requests": list(requests)})["results"]

    def models(self):
        return self._call("GET", "/models")

    def ready(self):
        try:
            return self._call("GET", "/health/ready").get("status") == "ready"
        except (SeqserveError, OSError):
            return False

    def evaluate(self, cases, models=None, k=(5, 10, 20), allow_leakage=False):
        body = {"cases": list(cases), "k": list(k), "allow_leakage": allow_leakage}
        if models:
            body["models"] = [{"model": m} if isinstance(m, str) else m for m in models]
        return self._call("POST", "/evaluate", body)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    s = Seqserve(sys.argv[1])
    answer = s.recommend(sys.argv[2:], k=5)
    print(json.dumps({"model": answer["model"], "version": answer["version"],
                      "items": [i["item"] for i in answer["items"]]}))
    try:
        s.recommend([], k=0)
    except SeqserveError as e:
        print(json.dumps({"refused": e.status, "code": e.code}))
