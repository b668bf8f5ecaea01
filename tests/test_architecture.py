"""The package's layers, checked statically: no import cycle between modules, no lower layer importing an upper one.

Every ``import`` and ``from ... import`` in the source is counted, including those inside functions and
under ``TYPE_CHECKING`` (a cycle hidden in a function body is still a cycle). The layers, lowest first,
are the README's Architecture diagram.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: installed package name -> source folder (pyproject's package-dir)
PACKAGES = {"modtransfer": ROOT / "harness", "modtransfer.variants": ROOT / "variants",
            "modtransfer.tasks": ROOT / "tasks", "modtransfer.reports": ROOT / "reports"}
#: lowest first; a module may import only from its own layer or layers listed before it
LAYERS = [
    ("core", ("modtransfer.core",)),
    ("zoo", ("modtransfer.variants", "modtransfer.tasks")),
    ("builtins", ("modtransfer.builtins",)),
    ("check", ("modtransfer.check",)),
    ("run", ("modtransfer.run",)),
    ("reports", ("modtransfer.reports",)),
    ("cli", ("modtransfer.cli", "modtransfer.__main__", "modtransfer")),
    ("bench", ("modtransfer.bench",)),
]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if name in PACKAGES and pkg != name:  # a sub-package listed separately
                continue
            out.setdefault(name, path)
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def known(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                k = known(t)
                if k and k != mod:
                    graph[mod].add(k)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    src = "def f():\n    from .store import Store\n"
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom))
    assert _resolve("modtransfer.run.status", False, node) == "modtransfer.run.store"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer_and_imports_only_downwards() -> None:
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) < 0)
    assert not unplaced, f"modules in no layer: {unplaced}"
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
           for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not bad, "a lower layer imports an upper one:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size(name: str) -> None:
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it; the limit is {MAX_LINES})"


def _defined(tree: ast.Module) -> set[str]:
    """Names a module binds itself at its top level (functions, classes, assignments, also under if/try)."""
    out: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try | ast.ExceptHandler | ast.With):
            stack.extend(ast.iter_child_nodes(node))
    return out


def second_addresses() -> tuple[list[str], list[str]]:
    """Imports of a name through a module that does not define it (the package's own ``__init__``, the
    public API, excepted), and ``_private`` names imported from another module."""
    mods = _modules()
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in mods.items()}
    defined = {m: _defined(t) for m, t in trees.items()}
    through, private = [], []
    for mod, tree in trees.items():
        is_pkg = mods[mod].name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _resolve(mod, is_pkg, node)
            if base not in mods:
                continue
            for a in node.names:
                if f"{base}.{a.name}" in mods:  # a submodule, not a name
                    continue
                where = f"{mod} line {node.lineno}: {a.name} from {base}"
                if a.name.startswith("_") and not a.name.startswith("__") and base != mod:
                    private.append(where)
                if base != "modtransfer" and a.name not in defined[base]:
                    through.append(where)
    return through, private


def test_the_address_finder_sees_a_reexport_and_a_private_name() -> None:
    tree = ast.parse("from x import A\nB = 1\nif True:\n    def c(): pass\ntry:\n    D = 2\nexcept E:\n    pass\n")
    assert _defined(tree) == {"B", "c", "D"}


def test_every_name_has_one_address() -> None:
    through, private = second_addresses()
    assert not through, ("import each name from the module that defines it, not through another one:\n"
                         + "\n".join(through))
    assert not private, ("a _private name is its module's own: make it public or keep it there:\n"
                         + "\n".join(private))


#: a repository path in backticks or a link: starts at one of the project's top folders
DOC_PATH = re.compile(r"(?<![\w./-])((?:harness|variants|tasks|reports|configs|tests)/[\w./-]*[\w/])")


def named_paths(text: str) -> set[str]:
    """The repository paths a document names (in code spans and links); globs and placeholders skipped."""
    spans = re.findall(r"`([^`\n]+)`|\]\(([^)\s]+)\)", text)
    found = set()
    for span in (a or b for a, b in spans):
        for path in DOC_PATH.findall(span):
            if not any(c in path for c in "*<>{}") and " " not in path:
                found.add(path.rstrip("."))
    return found


def test_the_path_finder_reads_code_spans_and_links() -> None:
    text = "see `harness/run/store.py`, [x](reports/page.py) and `runs/<name>/x`, `tasks/*.py`, modtransfer.run"
    assert named_paths(text) == {"harness/run/store.py", "reports/page.py"}


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md"])
def test_every_path_the_docs_name_exists(doc: str) -> None:
    missing = sorted(p for p in named_paths((ROOT / doc).read_text(encoding="utf-8")) if not (ROOT / p).exists())
    assert not missing, f"{doc} names paths that do not exist (moved or renamed?): {missing}"


def _one_edit_apart(a: str, b: str) -> bool:
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def test_module_names_say_what_they_hold() -> None:
    """No two modules of one folder one letter apart (``cell.py`` / ``cells.py``), and a module name used in two
    places means one thing: only a baseline component and the modifications of its slot share a name
    (``variants/baseline/ffn.py`` and ``variants/ffn.py``)."""
    names: dict[str, list[Path]] = {}
    for path in _modules().values():
        if path.stem != "__init__":
            names.setdefault(path.stem, []).append(path)
    close = [(p.relative_to(ROOT).as_posix(), q.relative_to(ROOT).as_posix())
             for a, b in itertools.combinations(sorted(names), 2) if _one_edit_apart(a, b)
             for p in names[a] for q in names[b] if p.parent == q.parent]
    assert not close, f"modules one letter apart in one folder: {close}"
    repeated = {n: ps for n, ps in names.items() if len(ps) > 1}
    slot_family = {n for n, ps in repeated.items()
                   if sorted(p.parent.relative_to(ROOT).as_posix() for p in ps) == ["variants", "variants/baseline"]}
    assert set(repeated) == slot_family, {n: [p.relative_to(ROOT).as_posix() for p in ps]
                                          for n, ps in repeated.items() if n not in slot_family}


def test_the_name_rule_sees_one_letter() -> None:
    assert _one_edit_apart("cell", "cells") and _one_edit_apart("stats", "state") and not _one_edit_apart("run", "run")
    assert not _one_edit_apart("plan", "plan_types")
