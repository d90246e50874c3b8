#!/usr/bin/env python3
"""Tests of scripts/module_graph.py on small made-up crates (standard library only).

usage: python3 scripts/test_module_graph.py"""
import contextlib
import io
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import module_graph  # noqa: E402


class Crate:
    """A temporary src/ folder made from {relative path: text}, removed after `test`."""

    def __init__(self, test, files):
        self.tmp = tempfile.TemporaryDirectory()
        test.addCleanup(self.tmp.cleanup)
        for rel, text in files.items():
            path = os.path.join(self.tmp.name, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)

    def run(self, *flags):
        """(exit code, printed text) of the check over this crate."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = module_graph.main([self.tmp.name, *flags])
        return code, out.getvalue()

    def edges(self):
        files = module_graph.read_crate(self.tmp.name)
        tops = {f.module[0] for f in files.values() if f.module} - module_graph.NOT_MODULES
        return {k: sorted(v) for k, v in module_graph.top_level_graph(files, tops).items()}

    def circles(self):
        files = module_graph.read_crate(self.tmp.name)
        return [(folder, comp) for folder, comp, _ in module_graph.folder_circles(files)]


LIB = "pub mod a;\npub mod b;\npub mod c;\n"


class TopLevel(unittest.TestCase):
    def test_groups_nested_groups_and_plain_paths_count(self):
        crate = Crate(self, {
            "lib.rs": LIB,
            "a.rs": "use crate::{b::{self, X}, c};\n",
            "b.rs": "fn f() { crate::c::g(); }\n",
            "c.rs": "use crate::{\n    a::{inner::{Y, Z}},\n};\n",
        })
        self.assertEqual(crate.edges(), {"a": ["b", "c"], "b": ["c"], "c": ["a"]})
        code, out = crate.run()
        self.assertEqual(code, 1)
        self.assertIn("a <-> b <-> c", out)

    def test_tests_comments_and_strings_do_not_count(self):
        crate = Crate(self, {
            "lib.rs": LIB,
            "a.rs": "use crate::b::X;\n",
            "b.rs": (
                "/// See [`crate::a::Y`].\n"
                "// crate::a::Z\n"
                "/* crate::a /* nested */ crate::a */\n"
                "const S: &str = \"crate::a::W\";\n"
                "const R: &str = r#\"crate::a\"#;\n"
                "const Q: char = '\\'';\n"
                "fn f<'x>(s: &'x str) -> &'x str { s }\n"
                "#[cfg(test)]\n#[allow(unused)]\nmod tests {\n    use crate::a::V;\n    fn g() { crate::c::h(); }\n}\n"
                "#[cfg(test)]\nuse crate::{a::T, c};\n"
                "#[cfg(test)]\nmod fixtures;\n"
            ),
            "b/fixtures.rs": "use crate::a::U;\n",
            "c.rs": "",
        })
        self.assertEqual(crate.edges(), {"a": ["b"]})
        self.assertEqual(crate.run()[0], 0)

    def test_forbidden_arrows_and_missing_modules(self):
        crate = Crate(self, {"lib.rs": LIB, "a.rs": "use crate::b;\n", "b.rs": "", "c.rs": ""})
        self.assertEqual(crate.run("--forbid", "b->a")[0], 0)
        self.assertEqual(crate.run("--forbid", "service->a")[0], 0)
        code, out = crate.run("--forbid", "a->b")
        self.assertEqual(code, 1)
        self.assertIn("forbidden a->b: FOUND", out)


class FileCircles(unittest.TestCase):
    def folder(self, mod_rs, **files):
        crate = {"lib.rs": "pub mod f;\n", "f/mod.rs": mod_rs}
        crate.update({f"f/{name}.rs": text for name, text in files.items()})
        return Crate(self, crate)

    def test_siblings_referring_to_each_other_are_a_circle(self):
        for there, back in [
            ("use super::y::A;", "use super::x::B;"),
            ("fn f() { self::super::y::g(); }", "use crate::f::x;"),
            ("use crate::f::{y::{A}};", "fn g() { super::x::h() }"),
        ]:
            crate = self.folder("pub mod x;\npub mod y;\n", x=there, y=back)
            self.assertEqual(crate.circles(), [("f", ["x.rs", "y.rs"])], (there, back))
        # From mod.rs: `self::x` and a bare `x::`.
        for there in ["use self::x::A;", "fn f() { x::g(); }"]:
            crate = self.folder("pub mod x;\npub struct Item;\n" + there, x="use super::Item;")
            self.assertEqual(crate.circles(), [("f", ["mod.rs", "x.rs"])], there)

    def test_declaring_a_module_is_not_a_reference(self):
        crate = self.folder("pub mod x;\nmod y;\npub struct Item;\n", x="use super::Item;", y="")
        self.assertEqual(crate.circles(), [])

    def test_mod_rs_items_and_re_exports(self):
        # x uses an item defined in mod.rs, and mod.rs uses x: a circle.
        crate = self.folder(
            "pub mod x;\npub struct Item;\nfn f() { x::g(); }\n", x="use super::Item;"
        )
        self.assertEqual(crate.circles(), [("f", ["mod.rs", "x.rs"])])
        # An item mod.rs only re-exports from y refers to y, not to mod.rs.
        crate = self.folder(
            "pub mod x;\npub mod y;\npub use y::Item;\n",
            x="use super::Item;",
            y="use super::x::Other;",
        )
        self.assertEqual(crate.circles(), [("f", ["x.rs", "y.rs"])])

    def test_allowing_file_circles_reports_them(self):
        crate = self.folder(
            "pub mod x;\npub mod y;\n", x="use super::y::A;", y="use super::x::B;"
        )
        self.assertEqual(crate.run()[0], 1)
        code, out = crate.run("--allow-file-circles")
        self.assertEqual(code, 0)
        self.assertIn("file circles inside folders: 1", out)
        self.assertIn("src/f: x.rs <-> y.rs", out)


if __name__ == "__main__":
    unittest.main()
