#!/usr/bin/env python3
"""Fails when the library's modules import each other in a cycle.

Every file under src/ is a module (src/a/b.rs is crate::a::b, src/a/mod.rs is crate::a). Its
imports are read from the text: `use` trees and inline `crate::`, `super::`, `self::` paths, and
relative `use child::...` paths. A path is resolved to the deepest module it names; a name that a
module re-exports (`pub use child::Name`) is followed to the module that defines it, as a
compiler would. An edge A -> B means A uses something of B; a cycle is a strongly connected set
of two or more modules. The binary (src/main.rs, src/cli/) is checked on its own.

Usage: scripts/check-modules.py [SRC_DIR]   (exit 1 and the cycles, when there are any)
"""
import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")


def drop_tests(text):
    """Removes `#[cfg(test)] mod name { ... }` blocks: tests are not part of the structure."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += text[i] == "{"
            depth -= text[i] == "}"
            i += 1
        text = text[: m.start()] + text[i:]


def strip(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\])'", "''", text)
    return drop_tests(re.sub(r"//[^\n]*", " ", text))


def modules(root_file, root_dir, crate):
    """{module path (tuple): file} for the crate rooted at root_file."""
    out = {(): root_file}
    todo = [((), root_file)]
    while todo:
        path, f = todo.pop()
        text = strip(open(f).read())
        base = os.path.dirname(f) if f == root_file or f.endswith("mod.rs") else f[:-3]
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            name = m.group(1)
            for cand in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
                if os.path.exists(cand):
                    out[path + (name,)] = cand
                    todo.append((path + (name,), cand))
                    break
    return out


def use_paths(text):
    """Every path named by `use` trees, as lists of segments."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand(m.group(1).replace("\n", " ")))
    return paths


def expand(tree):
    tree = tree.strip()
    depth, brace = 0, None
    for i, c in enumerate(tree):
        if c == "{":
            if depth == 0:
                brace = i
            depth += 1
        elif c == "}":
            depth -= 1
    if brace is None:
        tree = re.sub(r"\s+as\s+\w+$", "", tree)
        return [[s.strip() for s in tree.split("::") if s.strip()]]
    prefix = [s.strip() for s in tree[:brace].split("::") if s.strip()]
    inner = tree[brace + 1 : tree.rindex("}")]
    parts, depth, cur = [], 0, ""
    for c in inner:
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += c == "{"
        depth -= c == "}"
        cur += c
    parts.append(cur)
    out = []
    for p in parts:
        if not p.strip():
            continue
        for sub in expand(p):
            out.append(prefix + ([] if sub == ["self"] else sub))
    return out


def check(crate_root, src_dir, label):
    mods = modules(crate_root, src_dir, label)
    texts = {p: strip(open(f).read()) for p, f in mods.items()}
    # Re-exports: module -> {name: absolute path of what it re-exports}.
    reexports = {p: {} for p in mods}

    def absolute(cur, segs):
        if not segs:
            return None
        if segs[0] == "crate":
            return list(segs[1:])
        if segs[0] == "self":
            return list(cur) + list(segs[1:])
        if segs[0] == "super":
            up = list(cur)
            while segs and segs[0] == "super":
                up = up[:-1]
                segs = segs[1:]
            return up + list(segs)
        if tuple(cur) + (segs[0],) in mods:
            return list(cur) + list(segs)
        return None  # an external crate or a local name

    for p, text in texts.items():
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for segs in expand(m.group(1).replace("\n", " ")):
                a = absolute(p, segs)
                if a:
                    reexports[p][a[-1]] = a

    def resolve(a, seen=0):
        """The deepest module an absolute path names, following re-exports."""
        best = ()
        for i in range(len(a), -1, -1):
            if tuple(a[:i]) in mods:
                best = tuple(a[:i])
                break
        rest = a[len(best):]
        if rest and seen < 8 and rest[0] in reexports.get(best, {}):
            target = reexports[best][rest[0]] + rest[1:]
            return resolve(target, seen + 1)
        return best

    edges = {p: set() for p in mods}
    for p, text in texts.items():
        paths = use_paths(text)
        paths += [m.group(0).split("::") for m in re.finditer(r"\b(?:crate|super|self)(?:::\w+)+", text)]
        for segs in paths:
            a = absolute(p, segs)
            if a is None:
                continue
            target = resolve(a)
            if target != p:
                edges[p].add(target)
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    name = lambda p: "::".join((label,) + p)
    for comp in sccs:
        members = set(comp)
        print(f"cycle ({len(comp)} modules):")
        for v in sorted(comp):
            for w in sorted(edges[v] & members):
                print(f"  {name(v)} -> {name(w)}")
    n_edges = sum(len(e) for e in edges.values())
    print(f"{label}: {len(mods)} modules, {n_edges} import edges, {len(sccs)} cycles")
    return not sccs


ok = check(os.path.join(SRC, "lib.rs"), SRC, "crate")
if os.path.exists(os.path.join(SRC, "main.rs")):
    ok &= check(os.path.join(SRC, "main.rs"), SRC, "bin")
sys.exit(0 if ok else 1)
