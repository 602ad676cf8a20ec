"""The import structure: stages import only what lies below them.

Every module of ``codegpt/`` and ``data_prep/`` belongs to a layer of ``LAYERS``, lowest first:
the shared base, the hand-off formats between stages, then the stages in the order data moves
through them, then what drives them. An import, at module level or inside a function, may only
reach its own layer or a lower one, so no arrow runs from a lower stage to a higher one, and no
package imports another that imports it back. ``python tests/test_layers.py`` prints the arrows
between layers.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("codegpt", "data_prep")

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS = (
    ("base", ("codegpt.errors", "codegpt.io", "codegpt.config", "codegpt.outputs",
              "codegpt.stages", "codegpt.problems", "codegpt.benchmarks",
              "codegpt.infilling")),
    ("formats", ("codegpt.documents", "codegpt.pairs", "codegpt.model", "codegpt.sandbox")),
    ("prep", ("data_prep",)),
    ("tokenizer", ("codegpt.tokenizer",)),
    ("checkpoint", ("codegpt.checkpoint",)),
    ("sft-data", ("codegpt.sft_data",)),
    ("train", ("codegpt.train",)),
    ("eval", ("codegpt.eval",)),
    ("export", ("codegpt.export",)),
    ("report", ("codegpt.report",)),
    ("reference", ("codegpt.reference",)),
    ("cli", ("codegpt.cli", "codegpt.__main__", "codegpt")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the project's packages in a file, wherever it is."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # "from codegpt import checkpoint" imports the module codegpt.checkpoint
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if (ROOT / sub.replace(".", "/")).exists()
                              or (ROOT / (sub.replace(".", "/") + ".py")).exists() else base))
    return [(line, m) for line, m in found if m.split(".")[0] in PACKAGES]


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def arrows() -> list[tuple[str, int, str]]:
    """(file:line, importer layer, imported module) of every import in the project."""
    out = []
    for path in project_files():
        me = module_name(path)
        for line, target in imports(path):
            out.append((f"{path.relative_to(ROOT)}:{line}", me, target))
    return out


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in project_files() if layer_of(module_name(p)) is None]
    assert not missing, f"modules in no layer of LAYERS: {missing}"


def test_no_import_reaches_a_higher_layer():
    upward = []
    for where, me, target in arrows():
        a, b = layer_of(me), layer_of(target)
        if b is not None and b > a:
            upward.append(f"{where}: {me} ({LAYERS[a][0]}) imports {target} ({LAYERS[b][0]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_package_cycle():
    """Between the project's packages (codegpt.train, codegpt.eval, data_prep.sources, ...): no
    package imports one that imports it back, directly or through others."""
    def package(module: str) -> str:
        """A subpackage, or a module directly in codegpt/ (whose modules are layers apart)."""
        path = ROOT / module.replace(".", "/")
        if path.is_dir() or module.count(".") == 1 and module.startswith("codegpt."):
            return module
        return module.rpartition(".")[0] or module

    graph: dict[str, set[str]] = defaultdict(set)
    for _, me, target in arrows():
        a, b = package(me), package(target)
        if a != b and not b.startswith(a + ".") and not a.startswith(b + "."):
            graph[a].add(b)
    cycles = []
    for start in list(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join(trail + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    assert not cycles, "package cycles:\n" + "\n".join(sorted(set(cycles)))


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a module of a low layer importing a stage is reported."""
    pkg = tmp_path / "codegpt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("def f():\n    from codegpt.train import trainer\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("codegpt",))
    (pkg / "train").mkdir()
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "trainer.py").write_text("")
    try:
        test_no_import_reaches_a_higher_layer()
    except AssertionError as e:
        assert "codegpt/io.py:2: codegpt.io (base) imports codegpt.train.trainer (train)" in str(e)
    else:
        raise AssertionError("an upward import was not reported")


if __name__ == "__main__":
    between: dict[tuple[str, str], int] = defaultdict(int)
    for _, me, target in arrows():
        a, b = layer_of(me), layer_of(target)
        if b is not None and a != b:
            between[(LAYERS[a][0], LAYERS[b][0])] += 1
    for (a, b), n in sorted(between.items(), key=lambda kv: [x for x, _ in LAYERS].index(kv[0][0])):
        print(f"{a:>10s} -> {b:<10s} {n:3d} import(s){'   UPWARD' if [x for x, _ in LAYERS].index(b) > [x for x, _ in LAYERS].index(a) else ''}")
