#!/usr/bin/env python3
"""File-level import cycles of the workspace's crates (issue 19: no file circles). For each .rs file of
a crate, which other files of the same crate it names through `crate::`, `super::`, `self::` paths (in
`use` items and inline paths), resolved to the longest module path that exists as a file; prints the
strongly connected components of more than one file and exits 1 if there is any.
Usage: .ci/file-cycles.py SRC_DIR..."""
import os, re, sys
from collections import defaultdict

def modules(src):
    """module path tuple -> file"""
    m = {}
    for dp, _, fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            full = os.path.join(dp, f)
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            if rel in (['lib'], ['main']): path = ()
            elif rel[-1] == 'mod': path = tuple(rel[:-1])
            elif rel[0] == 'bin': continue
            else: path = tuple(rel)
            m[path] = full
    return m

def strip_comments(s):
    s = re.sub(r'//[^\n]*', '', s)
    s = re.sub(r'/\*.*?\*/', '', s, flags=re.S)
    return s

def expand_use(text):
    """yield path strings from use trees like a::{b, c::{d}}"""
    def rec(prefix, t):
        t = t.strip()
        if not t: return
        if '{' in t:
            i = t.index('{')
            head = t[:i].rstrip(':').strip()
            body = t[i+1:t.rindex('}')]
            parts, depth, cur = [], 0, ''
            for ch in body:
                if ch == '{': depth += 1
                if ch == '}': depth -= 1
                if ch == ',' and depth == 0: parts.append(cur); cur = ''
                else: cur += ch
            parts.append(cur)
            newp = prefix + ([head] if head else [])
            for p in parts: yield from rec(newp, p)
        else:
            t = t.split(' as ')[0].strip()
            yield '::'.join(prefix + [t]) if prefix else t
    yield from rec([], text)

def resolve(cur_mod, is_modrs, path, mods):
    segs = [x for x in path.split('::') if x]
    if not segs: return None
    if segs[0] == 'crate': base = (); segs = segs[1:]
    elif segs[0] in ('super', 'self'):
        base = cur_mod
        while segs and segs[0] in ('super', 'self'):
            if segs[0] == 'super': base = base[:-1]
            segs = segs[1:]
    elif cur_mod + (segs[0],) in mods: base = cur_mod   # a child module, named bare
    else: return None
    full = base + tuple(segs)
    for n in range(len(full), -1, -1):
        if full[:n] in mods: return full[:n]
    return None

def graph(src):
    mods = modules(src)
    g = defaultdict(set)
    for mp, f in mods.items():
        s = strip_comments(open(f).read())
        # drop #[cfg(test)] mod tests { ... } bodies? keep them: a test importing is still an edge
        paths = []
        for u in re.finditer(r'\buse\s+([^;]+);', s):
            paths += list(expand_use(u.group(1)))
        paths += re.findall(r'(?<![\w:])(\w+(?:::\w+)+)', s)
        for p in paths:
            t = resolve(mp, f.endswith('mod.rs') or f.endswith('lib.rs'), p, mods)
            if t is None or t == mp: continue
            # an import of an ancestor module (lib.rs/mod.rs) counts as an arrow too
            g[mp].add(t)
    return mods, g

def sccs(nodes, g):
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in idx: sc(v)
    return [x for x in out if len(x) > 1]

def main():
    bad = 0
    for src in sys.argv[1:]:
        mods, g = graph(src)
        # parent-module arrows (child file using items of its own mod.rs/lib.rs) are reported
        # separately: they make every module a "cycle" with its parent otherwise.
        up = [(a, b) for a in g for b in g[a] if len(b) < len(a) and a[:len(b)] == b]
        g2 = {a: {b for b in g[a] if not (len(b) < len(a) and a[:len(b)] == b)} for a in g}
        comps = sccs(list(mods), g2)
        name = lambda m: os.path.relpath(mods[m])
        print(f"{src}: {len(mods)} files, {sum(len(v) for v in g2.values())} arrows between siblings/down, {len(up)} arrows up to an enclosing mod.rs/lib.rs")
        for comp in comps:
            bad += 1
            print("  CYCLE:", " <-> ".join(sorted(name(m) for m in comp)))
        if '-v' in os.environ.get('CYCLES', ''):
            for a, b in sorted(up): print("   up:", name(a), "->", name(b))
    sys.exit(1 if bad else 0)

main()
