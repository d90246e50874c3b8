#!/usr/bin/env python3
"""The module import graph of a Rust crate's src/, and the circles in it.

Prints which top-level modules each top-level module refers to (every `crate::X` path, `use`
groups included), then checks:
  - no cycle between top-level modules (A refers to B, B refers back to A, or longer);
  - no circle between files of one folder: a file refers to a sibling (`super::b`, `self::b`,
    `crate::folder::b`, or `b::` from mod.rs) that refers back to it. A `mod b;` declaration
    is not a reference; a path to an item defined in mod.rs (`super::Item`) refers to mod.rs,
    one to an item mod.rs only re-exports (`pub use b::Item`) refers to b;
  - no forbidden arrow (`--forbid service->api`; a module that does not exist passes).
Code under `#[cfg(test)]` (and files only a `#[cfg(test)] mod x;` declares) does not count,
nor do comments and string literals.

usage: scripts/module_graph.py [SRC] [--forbid A->B]... [--allow-file-circles]
Exits 1 on a cycle, a forbidden arrow, or (without --allow-file-circles) a file circle.
Standard library only."""
import argparse
import bisect
import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# Top-level entries of src/ that are not modules of the library's graph.
NOT_MODULES = {"lib", "main", "bin"}


# Where a comment or a literal may start: //, /*, a raw or byte string, a string, a quote.
LITERAL_START = re.compile(r"//|/\*|(?<![\w])b?r#*\"|b?\"|'")
BLOCK_COMMENT_MARK = re.compile(r"/\*|\*/")
CHAR = re.compile(r"'(\\'|\\[^'\n]*|[^'\\\n])'")


def blank(chunk):
    """`chunk` as spaces, its newlines kept (so line numbers stay)."""
    return re.sub(r"[^\n]", " ", chunk)


def strip_code(text):
    """`text` with comments and string/char literals blanked."""
    out, i, n = [], 0, len(text)
    while i < n:
        m = LITERAL_START.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        i, tok = m.start(), m.group(0)
        if tok == "//":
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif tok == "/*":
            depth, j = 1, i + 2
            while j < n and depth:
                k = BLOCK_COMMENT_MARK.search(text, j)
                if not k:
                    j = n
                    break
                depth += 1 if k.group(0) == "/*" else -1
                j = k.end()
        elif "r" in tok:
            hashes = tok.count("#")
            end = text.find('"' + "#" * hashes, m.end())
            j = n if end < 0 else end + 1 + hashes
        elif tok.endswith('"'):
            j = m.end()
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
        else:
            # A char literal ('x', '\n', '\u{..}'); otherwise a lifetime, kept.
            c = CHAR.match(text, i)
            if not c:
                out.append(tok)
                i += 1
                continue
            j = c.end()
        out.append(blank(text[i:j]))
        i = j
    return "".join(out)


def item_end(text, i):
    """Index just past the item starting at `i`: a `use` ends at its `;`, anything else at
    its first `;` or its first closed `{...}` outside brackets."""
    is_use = re.match(r"\s*(pub(\([^)]*\))?\s+)?use\b", text[i:]) is not None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and c == "}" and not is_use:
                return j + 1
        elif c == ";" and depth == 0:
            return j + 1
        j += 1
    return j


CFG_TEST = re.compile(r"#\[\s*cfg\s*\(\s*test\s*\)\s*\]")


def drop_cfg_test(code):
    """(code without `#[cfg(test)]` items, names of modules declared by `#[cfg(test)] mod x;`)."""
    test_mods = []
    while True:
        m = CFG_TEST.search(code)
        if not m:
            return code, test_mods
        start = m.end()
        # Further attributes on the same item.
        while True:
            a = re.match(r"\s*#\[", code[start:])
            if not a:
                break
            start = item_end(code, start + a.end() - 1)
        end = item_end(code, start)
        decl = re.match(r"\s*(pub(\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code[start:end])
        if decl:
            test_mods.append(decl.group(3))
        code = code[: m.start()] + blank(code[m.start() : end]) + code[end:]


def split_top(s):
    """Splits a use-tree group body at its top-level commas."""
    parts, depth, cur = [], 0, []
    for c in s:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_use(tree, prefix=()):
    """Every (path, alias) a use tree names: `a::{b, c::{self, d as e}}` gives
    (a,b), (a,c), (a,c,d as e)."""
    tree = re.sub(r"\s+", " ", tree).strip()
    if tree.startswith("::"):
        tree = tree[2:]
    brace = tree.find("{")
    if brace >= 0:
        head = [s for s in tree[:brace].strip().rstrip(":").split("::") if s.strip()]
        body = tree[brace + 1 : tree.rfind("}")]
        out = []
        for part in split_top(body):
            out.extend(expand_use(part, prefix + tuple(s.strip() for s in head)))
        return out
    alias = None
    if " as " in tree:
        tree, alias = (s.strip() for s in tree.split(" as ", 1))
    segs = tuple(s.strip() for s in tree.split("::") if s.strip())
    if segs == ("self",):
        return [(prefix, alias or (prefix[-1] if prefix else None))]
    path = prefix + segs
    return [(path, alias or (path[-1] if path else None))]


USE = re.compile(r"(?<![\w:])(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]*);")
PATH = re.compile(r"(?<![\w$:.])((?:" + IDENT + r")(?:\s*::\s*" + IDENT + r")+)")


class File:
    """One source file: its module path and what it refers to."""

    def __init__(self, rel, module, code, children):
        self.rel = rel
        self.module = module
        self.code = code
        # Child modules declared in this file (`mod x;` / `mod x {`).
        self.children = children
        self.newlines = [m.start() for m in re.finditer("\n", code)]
        self._references = None

    def line_of(self, pos):
        return bisect.bisect_left(self.newlines, pos) + 1

    def resolve(self, segs):
        """The absolute module path of `segs` as written in this file, or None (not in crate)."""
        segs = list(segs)
        if not segs:
            return None
        here = list(self.module)
        if segs[0] == "crate":
            return tuple(segs[1:])
        if segs[0] not in ("self", "super") and segs[0] not in self.children:
            return None
        if segs[0] == "self":
            segs.pop(0)
        while segs and segs[0] == "super":
            if not here:
                return None
            here.pop()
            segs.pop(0)
        return tuple(here + segs)

    def references(self):
        """(absolute path, line, as written) for every in-crate path in this file's code."""
        if self._references is None:
            self._references = self._find_references()
        return self._references

    def _find_references(self):
        seen = []
        uses = []  # (start, end) of each `use` statement, in order
        for m in USE.finditer(self.code):
            uses.append((m.start(), m.end()))
            for path, _ in expand_use(m.group(1)):
                target = self.resolve(path)
                if target is not None:
                    seen.append((target, self.line_of(m.start()), "::".join(path)))
        starts = [a for a, _ in uses]
        for m in PATH.finditer(self.code):
            k = bisect.bisect_right(starts, m.start()) - 1
            if k >= 0 and m.start() < uses[k][1]:
                continue
            segs = [s.strip() for s in m.group(1).split("::")]
            target = self.resolve(segs)
            if target is not None:
                seen.append((target, self.line_of(m.start()), "::".join(segs)))
        return seen

    def reexports(self):
        """{name: absolute path} for the names this file's `use` statements bring in."""
        out = {}
        for m in USE.finditer(self.code):
            for path, alias in expand_use(m.group(1)):
                target = self.resolve(path)
                if target is not None and alias and alias != "*":
                    out[alias] = target
        return out


def module_of(rel):
    """Module path of a file relative to src/: engine/worker.rs -> (engine, worker)."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main") and (parts[-1] == "mod" or len(parts) == 1):
        parts = parts[:-1]
    return tuple(parts)


def read_crate(src):
    files = {}
    test_only = set()
    for root, dirs, names in os.walk(src):
        dirs.sort()
        rel_root = os.path.relpath(root, src)
        if rel_root.split(os.sep)[0] == "bin":
            continue
        for name in sorted(names):
            if not name.endswith(".rs"):
                continue
            rel = os.path.normpath(os.path.join(rel_root, name))
            with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
                code, test_mods = drop_cfg_test(strip_code(f.read()))
            module = module_of(rel)
            children = set(re.findall(r"(?<![\w:])mod\s+(" + IDENT + r")\s*[;{]", code))
            files[rel] = File(rel, module, code, children)
            test_only.update(module + (t,) for t in test_mods)
    # Files only a `#[cfg(test)] mod x;` declares, and what is below them.
    return {
        rel: f
        for rel, f in files.items()
        if not any(f.module[: len(t)] == t for t in test_only)
    }


def strongly_connected(nodes, edges):
    """Components with more than one node (Tarjan), each sorted; sorted by first member."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(comps)


def top_level_graph(files, tops):
    edges = defaultdict(set)
    for f in files.values():
        if not f.module or f.module[0] not in tops:
            continue
        for target, _, _ in f.references():
            if target and target[0] in tops and target[0] != f.module[0]:
                edges[f.module[0]].add(target[0])
    return edges


def folder_circles(files):
    """[(folder, [members], [(a, b, 'where a refers to b')])] for each circle of files in a
    folder below src/. Members are the folder's files, its subfolders as wholes, and the
    folder's own module file (mod.rs, or folder.rs beside it), called mod.rs."""
    found = []
    for folder in sorted({os.path.dirname(rel) for rel in files} - {""}):
        mod_rs = files.get(os.path.join(folder, "mod.rs")) or files.get(folder + ".rs")
        if mod_rs is None:
            continue
        here = mod_rs.module

        def node(name):
            """The member holding child module `name` of this folder (None: mod.rs)."""
            if name is None:
                return "mod.rs"
            return name + ".rs" if os.path.join(folder, name + ".rs") in files else name + "/"

        inside = [f for f in files.values() if f.module[: len(here)] == here]
        children = {f.module[len(here)] for f in inside if len(f.module) > len(here)}
        reexported = mod_rs.reexports()
        edges, why = defaultdict(set), {}
        for f in inside:
            src_node = node(f.module[len(here)] if len(f.module) > len(here) else None)
            for target, line, written in f.references():
                if target[: len(here)] != here:
                    continue
                rest = target[len(here) :]
                if rest and rest[0] not in children and rest[0] in reexported:
                    # An item mod.rs only re-exports belongs to where it comes from.
                    origin = reexported[rest[0]]
                    if origin[: len(here)] != here:
                        continue
                    rest = origin[len(here) :]
                dst_node = node(rest[0] if rest and rest[0] in children else None)
                if dst_node != src_node:
                    edges[src_node].add(dst_node)
                    why.setdefault((src_node, dst_node), f"src/{f.rel}:{line} {written}")
        nodes = set(edges) | {d for ds in edges.values() for d in ds}
        for comp in strongly_connected(nodes, edges):
            arrows = [(a, b, why[(a, b)]) for a in comp for b in sorted(edges[a]) if b in comp]
            found.append((folder, comp, arrows))
    return found


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("src", nargs="?", default=os.path.join(here, "..", "src"))
    parser.add_argument("--forbid", action="append", default=[], metavar="A->B",
                        help="fail if top-level module A refers to B")
    parser.add_argument("--allow-file-circles", action="store_true",
                        help="report circles between files of a folder without failing")
    args = parser.parse_args(argv)
    forbid = []
    for arrow in args.forbid:
        if "->" not in arrow:
            parser.error(f"--forbid {arrow!r}: expected A->B")
        forbid.append(tuple(s.strip() for s in arrow.split("->", 1)))

    files = read_crate(args.src)
    tops = {f.module[0] for f in files.values() if f.module} - NOT_MODULES
    edges = top_level_graph(files, tops)
    width = max((len(t) for t in tops), default=0)
    for t in sorted(tops):
        print(f"{t:<{width}} -> {', '.join(sorted(edges.get(t, ())))}")

    failed = False
    cycles = strongly_connected(tops, edges)
    print(f"cycles between top-level modules: {len(cycles)}")
    for comp in cycles:
        print("  " + " <-> ".join(comp))
    failed |= bool(cycles)

    for a, b in forbid:
        if a not in tops or b not in tops:
            missing = " and ".join(m for m in (a, b) if m not in tops)
            print(f"forbidden {a}->{b}: passes ({missing} does not exist)")
        elif b in edges.get(a, ()):
            print(f"forbidden {a}->{b}: FOUND")
            failed = True
        else:
            print(f"forbidden {a}->{b}: absent")

    circles = folder_circles(files)
    note = " (allowed for now: --allow-file-circles)" if circles and args.allow_file_circles else ""
    print(f"file circles inside folders: {len(circles)}{note}")
    for folder, comp, arrows in circles:
        print(f"  src/{folder}: {' <-> '.join(comp)}")
        for a, b, where in arrows:
            print(f"      {a} -> {b}  ({where})")
    failed |= bool(circles) and not args.allow_file_circles
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
