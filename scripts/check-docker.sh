#!/usr/bin/env bash
# Checks the Dockerfile without a container engine (none can pull base images here; run by .ci/run):
#   1. hadolint (warnings fail; each ignore is justified beside it in the Dockerfile);
#   2. every RUN step, continuation lines joined, parses under the shell its stage declares
#      (SHELL [...]; /bin/sh by default), and scripts it sources parse under that shell too.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(bash scripts/ops-tools.sh)
"$BIN/hadolint" --no-color --failure-threshold warning Dockerfile
python3 - Dockerfile <<'EOF_PY'
import json, re, subprocess, sys
lines = open(sys.argv[1]).read().split("\n")
steps, buf = [], ""
for line in lines:
    if not buf and (line.lstrip().startswith("#") or not line.strip()):
        continue
    if line.lstrip().startswith("#"):  # comments inside a continued instruction
        continue
    buf += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        steps.append(buf.strip())
        buf = ""
shell, checked = ["/bin/sh", "-c"], 0
for s in steps:
    word, _, rest = s.partition(" ")
    word = word.upper()
    if word == "FROM":
        shell = ["/bin/sh", "-c"]
    elif word == "SHELL":
        shell = json.loads(rest)
    elif word == "RUN":
        exe = shell[0].rsplit("/", 1)[-1]
        r = subprocess.run([exe, "-n", "-c", rest], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"RUN step does not parse under {exe}: {rest}\n{r.stderr}")
        # A sourced project script must parse under the same shell.
        for src in re.findall(r"(?:source|\.)\s+(scripts/[\w./-]+)", rest):
            r = subprocess.run([exe, "-n", src], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{src} (sourced in a RUN step) does not parse under {exe}\n{r.stderr}")
            if exe != "bash" and "BASH_SOURCE" in open(src).read():
                sys.exit(f"{src} uses BASH_SOURCE but is sourced under {exe}")
        checked += 1
print(f"[docker] hadolint clean; {checked} RUN steps parse under their stage's shell")
EOF_PY
