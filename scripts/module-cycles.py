#!/usr/bin/env python3
"""Report import circles between the modules of a crate.

Usage: scripts/module-cycles.py SRC_DIR DEPTH

Every `crate::a::b::...` and `super::…` path in a file (comments stripped, `use crate::{a, b::c}`
groups expanded) is an edge from the file's module to the referenced module, both cut to DEPTH path
components (1 = the top-level modules, i.e. the layers of rounds-server; 2 = the modules inside
them). A parent and its own child referring to each other is not counted. Prints every strongly
connected component of more than one module and exits 1 if there is any.
"""
import os
import re
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


def group_paths(body):
    """Top-level paths of a `{...}` use group, nested groups kept as prefixes."""
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return [re.match(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*", p).group(0)
            for p in out if re.match(r"[A-Za-z_]", p)]


def refs(text, me):
    """Absolute module paths referred to: `crate::…`, and `super::…` resolved from `me`."""
    for m in re.finditer(r"\b(crate::|(?:super::)+)((?:[A-Za-z_][A-Za-z0-9_]*::)*)(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
        if m.group(1) == "crate::":
            base = []
        else:
            ups = m.group(1).count("super")
            if ups > len(me):
                continue
            base = list(me[: len(me) - ups])
        prefix = "::".join(base + [""]) if base else ""
        prefix += m.group(2)
        if m.group(2) == "{":
            start = m.end()
            depth, i = 1, start
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            for p in group_paths(text[start:i - 1]):
                yield (prefix + p).split("::")
        else:
            yield (prefix + m.group(3)).split("::")


def main():
    src, depth = sys.argv[1], int(sys.argv[2])
    mods = set()
    files = []
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files.append(p)
                mods.add(tuple(module_of(src, p)))
    edges = {}
    for p in files:
        full = module_of(src, p)
        me = tuple(full[:depth])
        if not me:
            continue
        for r in refs(strip_comments(open(p).read()), full):
            # keep the longest prefix that is a module
            target = ()
            for k in range(1, len(r) + 1):
                if tuple(r[:k]) in mods:
                    target = tuple(r[:k])
            target = target[:depth]
            if not target or target == me:
                continue
            if target[: len(me)] == me or me[: len(target)] == target:
                continue  # parent and child
            edges.setdefault(me, set()).add(target)
    # Tarjan
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
    for v in list(edges):
        if v not in index:
            visit(v)
    nodes = {v for v in edges} | {w for ws in edges.values() for w in ws}
    print(f"{src} at depth {depth}: {len(nodes)} modules, {sum(len(w) for w in edges.values())} edges, "
          f"{len(sccs)} circles")
    for c in sccs:
        print("  circle: " + " ⇄ ".join("::".join(m) for m in sorted(c)))
    sys.exit(1 if sccs else 0)


if __name__ == "__main__":
    main()
