#!/usr/bin/env python3
"""Stub out the tch wrappers that an older libtorch lacks (scripts/cuda-check.sh bundle).

    stub_missing_ops.py torch_api_generated.cpp BUILD_LOG

tch's generated C++ wrappers (libtch/torch_api_generated.cpp) call every ATen op of the libtorch
it was generated for. Built against an older libtorch, the ops added since do not compile. For each
compiler error in BUILD_LOG that points into the file, the body of the wrapper holding that line
(its PROTECT(...) block) becomes a throw, which tch turns into an error if the op is ever called;
seqserve calls none of them. Prints the wrappers it stubbed; exits 1 if it found none to stub.
"""
import re
import sys

cpp, log = sys.argv[1], sys.argv[2]
name = cpp.rsplit("/", 1)[-1]
# From the bottom up, so that a stubbed body does not move the lines of the errors above it.
bad = sorted({int(m.group(1)) for m in re.finditer(re.escape(name) + r":(\d+):\d+: error:", open(log).read())}, reverse=True)
lines = open(cpp).read().split("\n")
stubbed = []
for ln in bad:
    i = ln - 1
    start = i
    while start > 0 and not re.match(r"^\w[\w\s\*]* atg_\w+\(", lines[start]):
        start -= 1
    fn = re.search(r"(atg_\w+)\(", lines[start]).group(1)
    if fn in stubbed:
        continue
    open_ = next(j for j in range(start, len(lines)) if lines[j].strip() == "PROTECT(")
    close = next(j for j in range(open_ + 1, len(lines)) if lines[j].rstrip() == "  )")
    lines[open_ + 1:close] = [f'    throw std::runtime_error("{fn}: not in this libtorch");']
    stubbed.append(fn)
open(cpp, "w").write("\n".join(lines))
print(" ".join(stubbed))
sys.exit(0 if stubbed else 1)
