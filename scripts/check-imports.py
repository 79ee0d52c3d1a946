#!/usr/bin/env python3
"""Fails when files of a crate import each other in a circle.

Usage: scripts/check-imports.py [crate src dir ...]   (default: every crate's src)

Every `crate::`, `super::`, `self::` path (in `use` trees and inline, comments and strings
skipped) and every path starting with one of the file's own child modules is resolved to
the file that defines it: modules map to files (`a/b.rs` or `a/b/mod.rs`), a name that is
not a module is an item of the module's file, and a `pub use` re-export is followed to
where the item is defined. That gives an edge from the importing file to the defining one.

A strongly connected set of files is a circle, with one exception: a module may use its own
submodules while they use it (`mod.rs` using `child::X`, `child.rs` using `super::Y`). So
for each circle the innermost module holding all of its files is found; if that module's
own file is part of it, its edges down into its submodules are set aside and what remains
is checked again; otherwise the circle is reported.

Then the same between top-level modules (`router`, `session`, `store`, ...): each file
counts as the module it belongs to, and test code is left out (`#[cfg(test)]` modules,
inline or in files: tests beside the code may use the broker from above). No circle there
means the modules form layers.
"""

import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(src):
    """Blanks out comments, string and char literals, keeping line structure."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if src[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 20]) and not re.match(r"[A-Za-z0-9_]", src[i - 1] if i else " "):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}'), not a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Crate:
    def __init__(self, src_dir):
        self.src = src_dir
        self.files = {}  # module path tuple -> file path
        self.text = {}
        self.test_only = set()  # files compiled only for tests (`#[cfg(test)] mod x;`)
        root = os.path.join(src_dir, "lib.rs")
        if not os.path.exists(root):
            root = os.path.join(src_dir, "main.rs")
        self._load(("",), root)

    def _load(self, module, path, test_only=False):
        self.files[module] = path
        if test_only:
            self.test_only.add(path)
        with open(path, encoding="utf-8") as f:
            text = strip_comments_and_strings(f.read())
        self.text[path] = text
        is_dir_module = module == ("",) or os.path.basename(path) == "mod.rs"
        base = os.path.dirname(path) if is_dir_module else path[:-3]
        for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*;", text):
            name = m.group(1)
            child = module + (name,)
            explicit = re.search(r'#\[path\s*=\s*"([^"]+)"\]\s*(pub(\([^)]*\))?\s+)?mod\s+' + name + r"\s*;",
                                 open(path, encoding="utf-8").read())
            if explicit:
                candidates = [os.path.join(os.path.dirname(path), explicit.group(1))]
            else:
                candidates = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            under_cfg_test = bool(re.search(CFG_TEST_BEFORE, text[:m.start()]))
            for c in candidates:
                if os.path.exists(c):
                    self._load(child, c, test_only or under_cfg_test)
                    break
            else:
                sys.exit(f"check-imports: no file for module {'::'.join(child[1:])} declared in {path}")

    def module_of(self, path):
        return next(m for m, p in self.files.items() if p == path)

    def children(self, module):
        return {m[-1] for m in self.files if len(m) == len(module) + 1 and m[:-1] == module}

    def reexports(self, module):
        """name -> absolute path (tuple of segments) for `pub use` items of a module's file."""
        found = {}
        text = self.text[self.files[module]]
        for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+([^;]+);", text):
            for segs in expand_use_tree(m.group(2).replace("\n", " ")):
                if not segs:
                    continue
                name = segs[-1]
                if " as " in name:
                    segs[-1], name = [s.strip() for s in name.split(" as ")]
                if name == "self":
                    segs, name = segs[:-1], segs[-2]
                absolute = self.absolute(module, segs)
                if absolute is not None:
                    found[name] = absolute
        return found

    def absolute(self, module, segs):
        """Turns a path as written in `module` into one from the crate root; None if external."""
        segs = list(segs)
        if not segs:
            return None
        if segs[0] == "crate":
            return [""] + segs[1:]
        cur = list(module)
        if segs[0] in ("self", "super"):
            while segs and segs[0] in ("self", "super"):
                if segs.pop(0) == "super":
                    cur.pop()
            return cur + segs
        if segs[0] in self.children(module):
            return cur + segs
        return None

    def resolve(self, absolute, depth=0):
        """The file defining the item an absolute path names."""
        module = (absolute[0],)
        for seg in absolute[1:]:
            if seg in self.children(module):
                module = module + (seg,)
                continue
            if depth < 10 and seg != "*":
                target = self.reexports(module).get(seg)
                if target is not None:
                    return self.resolve(target, depth + 1)
            break
        return self.files[module]


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = re.sub(r"\s+", " ", tree).strip()

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        return [p.strip() for p in parts if p.strip()]

    def walk(prefix, s):
        brace = s.find("{")
        if brace < 0:
            return [prefix + [p.strip() for p in s.split("::") if p.strip()]]
        head = [p.strip() for p in s[:brace].split("::") if p.strip()]
        inner = s[brace + 1:s.rfind("}")]
        result = []
        for part in split_top(inner):
            result.extend(walk(prefix + head, part))
        return result

    return walk([], tree)


# `#[cfg(test)]` (and any other attributes, `pub`) right before a `mod` keyword.
CFG_TEST_BEFORE = r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*(pub(\([^)]*\))?\s+)?$"

PATH = re.compile(r"(?<![A-Za-z0-9_:])((?:" + IDENT + r")(?:\s*::\s*(?:" + IDENT + r"|\*))+)")
USE = re.compile(r"\buse\s+([^;]+);")


def file_edges(crate, path, skip_tests=False):
    """Files `path` imports, with each edge's first line for the report. With `skip_tests`,
    imports made only by test code (a `#[cfg(test)]` inline module) are left out."""
    text = crate.text[path]
    module = crate.module_of(path)
    # Inline modules (`mod tests { ... }`) shift what `self`/`super` mean inside them.
    spans = []
    for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", text):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        spans.append((m.start(), j, m.group(1)))
    test_spans = [(s, e) for (s, e, _) in spans if re.search(CFG_TEST_BEFORE, text[:s])]

    def module_at(pos):
        inner = [name for (s, e, name) in spans if s <= pos < e]
        return module + tuple(inner)

    def known_children(mod):
        # Inline modules have no files; only the file's own children can start a path.
        return crate.children(mod) if mod in crate.files else set()

    edges = {}

    def add(pos, segs):
        if skip_tests and any(s <= pos < e for s, e in test_spans):
            return
        mod = module_at(pos)
        if segs[0] not in ("crate", "self", "super") and segs[0] not in known_children(mod):
            return
        cur = list(mod)
        if segs[0] in ("self", "super"):
            rest = list(segs)
            while rest and rest[0] in ("self", "super"):
                if rest.pop(0) == "super":
                    cur.pop()
            # Leaving an inline module lands back in this file or one of its ancestors.
            while tuple(cur) not in crate.files:
                cur.pop()
            absolute = cur + rest
        elif segs[0] == "crate":
            absolute = [""] + list(segs[1:])
        else:
            absolute = cur + list(segs)
        target = crate.resolve(absolute)
        if target != path:
            line = text.count("\n", 0, pos) + 1
            edges.setdefault(target, line)

    use_spans = []
    for m in USE.finditer(text):
        use_spans.append((m.start(), m.end()))
        for segs in expand_use_tree(m.group(1)):
            segs = [s.split(" as ")[0].strip() for s in segs]
            if segs and segs[-1] == "self":
                segs = segs[:-1]
            if len(segs) >= 1:
                add(m.start(), segs)
    for m in PATH.finditer(text):
        if any(s <= m.start() < e for s, e in use_spans):
            continue
        segs = [s.strip() for s in m.group(1).split("::")]
        add(m.start(), segs)
    return edges


def sccs(nodes, graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in nodes:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == node:
                        break
                out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def circles(crate, graph, nodes):
    found = []
    for comp in sccs(nodes, graph):
        if len(comp) < 2:
            continue
        modules = [crate.module_of(p) for p in comp]
        common = modules[0]
        for m in modules[1:]:
            k = 0
            while k < min(len(common), len(m)) and common[k] == m[k]:
                k += 1
            common = common[:k]
        owner = crate.files[common]
        if owner in comp:
            # The module's own edges down into its submodules are allowed.
            pruned = {v: {w for w in ws if not (v == owner and w in comp)} for v, ws in graph.items()}
            found.extend(circles(crate, pruned, comp))
        else:
            found.append(comp)
    return found


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = sys.argv[1:] or [
        "crates/proto/src",
        "crates/amqp-proto/src",
        "crates/ws-stream/src",
        "crates/broker/src",
        "crates/client/src",
        "crates/midge/src",
    ]
    failed = False
    for d in dirs:
        crate = Crate(os.path.join(root, d) if not os.path.isabs(d) else d)
        graph, lines = {}, {}
        for path in crate.files.values():
            edges = file_edges(crate, path)
            graph[path] = set(edges)
            for target, line in edges.items():
                lines[(path, target)] = line
        # Between top-level modules (`router`, `session`, ...), test code aside: the layers
        # of ARCHITECTURE.md. Tests beside the code may use the broker from above.
        top = lambda p: crate.module_of(p)[:2]
        modules = defaultdict(set)
        for path in crate.files.values():
            if path in crate.test_only or len(crate.module_of(path)) < 2:
                continue
            for target in file_edges(crate, path, skip_tests=True):
                if len(crate.module_of(target)) >= 2 and top(target) != top(path):
                    modules[top(path)].add(top(target))
        names = set(modules) | {m for ms in modules.values() for m in ms}
        for comp in sccs(names, modules):
            if len(comp) > 1:
                failed = True
                print(f"module circle in {d}: " + ", ".join(sorted("::".join(m[1:]) for m in comp)))
                for v in sorted(comp):
                    for w in sorted(modules[v] & comp):
                        print(f"  {'::'.join(v[1:])} -> {'::'.join(w[1:])}")
        for comp in circles(crate, graph, set(graph)):
            failed = True
            rel = lambda p: os.path.relpath(p, root)
            print(f"import circle in {d}: {', '.join(sorted(rel(p) for p in comp))}")
            for v in sorted(comp):
                for w in sorted(graph[v] & comp):
                    print(f"  {rel(v)}:{lines[(v, w)]} -> {rel(w)}")
    if failed:
        sys.exit(1)
    print("check-imports: no import circles in " + ", ".join(dirs))


if __name__ == "__main__":
    main()
