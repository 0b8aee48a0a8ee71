"""The import structure of jscope: layers, no cycles, small modules.

The rules, read from every module's imports (its ``ast``, function-level and
``TYPE_CHECKING`` imports included):

- **Layers.** Imports point one way, down this order (`LAYERS`)::

      errors, jax_compat (every touch of JAX internals)
      typing (type aliases and AUTO_REUSE's type)
      names, tree, initializers
      context (the frame), ema (moving averages of trees), checkpoint
      scope, values (dtypes, shapes), rng (keys), sharding (rules, axes)
      access (how a run reaches a variable)
      variables (get_variable), handle (Variable, assign), lift
      run, transforms
      summary
      jscope (the package: the public API)
      layers/_checks (argument checks), layers/_conv_common and _norm_common
      (what the convolutions, and the normalizations, share), then each layer
      module, then
      layers/__init__

  A module imports only modules of a lower layer. The ``checkpoint`` package is a
  branch of its own, layered inside (keys, layout, interrupts, processes <
  integrity, lock, orbax_io < read < arrays < saver < the package): it needs only
  ``tree``, ``errors`` and ``jax_compat`` (`ONLY`).
  ``tf1`` (TF1 checkpoints: protos, table < bundle < api < ``jscope.tf1``) sits
  beside it and reads the checkpoint state through ``checkpoint.layout``.
  ``slim`` (tf-slim's layers: arg_scope < checks < layers, norm, basic <
  ``jscope.slim``) is built on the modules behind the public API
  (``scope``, ``variables``, ``handle``, ``rng``); nothing imports it but
  ``jscope.slim``, which the package does not import (``import jscope.slim``).
- **No cycles**, not even through an import inside a function. One import is
  exempt: ``jscope/__init__.py`` ends by importing ``jscope.layers`` (public as
  ``js.layers``), whose modules then see a complete ``jscope``; it must stay the
  package's last import.
- ``jscope/errors.py`` imports nothing from jscope.
- ``_src`` never imports ``jscope/__init__.py``.
- ``layers/`` uses the public API only: ``jscope``, ``jscope.errors``,
  ``jscope.initializers``, ``jscope.typing`` and its own modules.
- Only the checkpoint module(s) (``jscope._src.checkpoint*``) import Orbax, and
  only ``jscope._src.jax_compat`` imports ``jax._src``.
- No ``_private`` name of one jscope module is imported or read by another:
  promote it or move it.
- No module is over `MAX_LINES` lines.

`KNOWN` lists today's violations, each with the change that removes it; an entry
that no longer occurs fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jscope"
MAX_LINES = 600

# The layer of every module, lowest first. A new module gets a line here.
LAYERS = [
    [
        "jscope.errors",
        "jscope._src",
        "jscope._src.jax_compat",
        "jscope._src.tf1",
        "jscope._src.slim",
    ],
    ["jscope.typing"],
    [
        "jscope._src.names",
        "jscope._src.tree",
        "jscope._src.axes",
        "jscope.initializers",
        "jscope._src.checkpoint.keys",
        "jscope._src.checkpoint.layout",
        "jscope._src.checkpoint.interrupts",
        "jscope._src.checkpoint.processes",
        "jscope._src.tf1.protos",
        "jscope._src.tf1.table",
        "jscope._src.slim.arg_scope",
    ],
    [
        "jscope._src.context",
        "jscope._src.ema",
        "jscope._src.checkpoint.integrity",
        "jscope._src.checkpoint.lock",
        "jscope._src.checkpoint.orbax_io",
        "jscope._src.tf1.bundle",
    ],
    [
        "jscope._src.scope",
        "jscope._src.values",
        "jscope._src.rng",
        "jscope._src.sharding",
    ],
    [
        "jscope._src.access",
        "jscope._src.name_scopes",
        "jscope._src.checkpoint.read",
        "jscope._src.slim.checks",
        "jscope._src.meshes",
    ],
    [
        "jscope._src.variables",
        "jscope._src.handle",
        "jscope._src.lift",
        "jscope._src.coldinit",
        "jscope._src.checkpoint.arrays",
        "jscope._src.tf1.api",
    ],
    ["jscope._src.plans"],
    ["jscope._src.run", "jscope._src.transforms", "jscope._src.checkpoint.saver"],
    [
        "jscope._src.summary",
        "jscope._src.templates",
        "jscope._src.checkpoint",
        "jscope.tf1",
        "jscope._src.slim.layers",
        "jscope._src.slim.norm",
        "jscope._src.slim.basic",
    ],
    ["jscope", "jscope.slim"],
    ["jscope.layers._checks"],
    ["jscope.layers._conv_common", "jscope.layers._norm_common"],
    ["jscope.layers._*"],
    ["jscope.layers"],
]

# Module prefixes allowed to import only these jscope modules (and each other).
ONLY = {
    "jscope._src.checkpoint": {
        "jscope.errors",
        "jscope._src.tree",
        "jscope._src.jax_compat",
    }
}

PUBLIC = {"jscope", "jscope.errors", "jscope.initializers", "jscope.typing"}
ORBAX_MODULES = "jscope._src.checkpoint"  # a module or a package's prefix
JAX_INTERNALS_MODULE = "jscope._src.jax_compat"

# Today's violations: (rule, importer, imported or file, detail) -> what ends it.
KNOWN: dict[tuple[str, str, str, str], str] = {}


# ------------------------------------------------------------- reading imports


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from m import n``, the name)."""

    importer: str
    module: str  # the module imported, resolved to a module where it is one
    name: str  # "" for ``import m``; ``n`` for ``from m import n``
    bound: str  # the local name the import binds
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``
    top_level: bool  # at module level (not in a function or class)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(p): p
    for p in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in p.parts
}

_BODIES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> list[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []

    def visit(node, type_checking, top_level):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append(
                        Import(
                            module,
                            alias.name,
                            "",
                            alias.asname or alias.name.split(".")[0],
                            child.lineno,
                            type_checking,
                            top_level,
                        )
                    )
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")
                    parent = parent[: len(parent) - child.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    is_module = sub in MODULES
                    out.append(
                        Import(
                            module,
                            sub if is_module else base,
                            "" if is_module else alias.name,
                            alias.asname or alias.name,
                            child.lineno,
                            type_checking,
                            top_level,
                        )
                    )
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(child, True, top_level)
            elif isinstance(child, _BODIES):
                visit(child, type_checking, False)
            else:
                visit(child, type_checking, top_level)

    visit(tree, False, True)
    return out


IMPORTS = {module: _imports(module) for module in MODULES}


def _jscope(module: str) -> bool:
    return module == "jscope" or module.startswith("jscope.")


def _internal_edges() -> list[Import]:
    return [imp for imps in IMPORTS.values() for imp in imps if _jscope(imp.module)]


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name.endswith("*") and module.startswith(name[:-1])):
                return i
    return None


def _is_last_layers_import(imp: Import) -> bool:
    """``jscope/__init__.py``'s final ``from jscope import layers``."""
    if (imp.importer, imp.module) != ("jscope", "jscope.layers"):
        return False
    return imp.line == max(i.line for i in IMPORTS["jscope"])


# ------------------------------------------------------------------ violations


def _edge_violations(imp: Import) -> set[tuple[str, str, str, str]]:
    """The rules one import breaks, as `KNOWN` keys."""
    src, dst = imp.importer, imp.module
    found = set()
    if imp.module.split(".")[0] == "orbax" and not src.startswith(ORBAX_MODULES):
        found.add(("orbax", src, dst, ""))
    if dst.startswith("jax._src") and src != JAX_INTERNALS_MODULE:
        found.add(("jax-internals", src, dst, ""))
    if not _jscope(dst) or src == dst or _is_last_layers_import(imp):
        return found
    ls, ld = _layer(src), _layer(dst)
    if ls is None or ld is None:
        return found  # reported by test_every_module_has_a_layer
    for prefix, allowed in ONLY.items():
        inside = src == prefix or src.startswith(prefix + ".")
        own = dst == prefix or dst.startswith(prefix + ".")
        if inside and not own and dst not in allowed:
            found.add(("only", src, dst, ""))
    if ld > ls:
        found.add(("upward", src, dst, ""))
    elif ld == ls:
        found.add(("same-layer", src, dst, ""))
    if _private(imp.name):
        found.add(("private", src, dst, imp.name))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_attribute_reads(module: str) -> set[tuple[str, str, str, str]]:
    """``m._name`` where ``m`` names another jscope module imported here."""
    aliases = {
        imp.bound: imp.module
        for imp in IMPORTS[module]
        if not imp.name and _jscope(imp.module) and imp.module != module
    }
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return {
        ("private", module, aliases[node.value.id], node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and _private(node.attr)
    }


def _violations() -> set[tuple[str, str, str, str]]:
    found: set[tuple[str, str, str, str]] = set()
    for module, imps in IMPORTS.items():
        for imp in imps:
            found |= _edge_violations(imp)
        found |= _private_attribute_reads(module)
        path = MODULES[module]
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES:
            found.add(("size", module, path.relative_to(ROOT).as_posix(), ""))
    return found


VIOLATIONS = _violations()


def _unexpected(rules: set[str]) -> list[str]:
    return sorted(
        f"{rule}: {src} -> {dst} {name}".rstrip()
        for rule, src, dst, name in VIOLATIONS - KNOWN.keys()
        if rule in rules
    )


# ------------------------------------------------------------------------ tests


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def test_imports_point_down_the_layers():
    assert not _unexpected({"upward", "same-layer", "only"}), (
        "imports against the layer order (see this file's docstring): "
        f"{_unexpected({'upward', 'same-layer', 'only'})}"
    )


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    known = {(src, dst) for _, src, dst, _ in KNOWN}
    edges = {
        (imp.importer, imp.module)
        for imp in _internal_edges()
        if not imp.type_checking
        and not _is_last_layers_import(imp)
        and imp.importer != imp.module
        and (imp.importer, imp.module) not in known
    }
    assert not _cycles(edges), f"import cycles: {_cycles(edges)}"


def test_the_package_imports_layers_last():
    (imp,) = [i for i in IMPORTS["jscope"] if i.module == "jscope.layers"]
    assert _is_last_layers_import(imp) and imp.top_level


def test_errors_imports_nothing_from_jscope():
    assert [i for i in IMPORTS["jscope.errors"] if _jscope(i.module)] == []


def test_src_never_imports_the_package():
    bad = [
        f"{i.importer}:{i.line}"
        for i in _internal_edges()
        if i.importer.startswith("jscope._src") and i.module == "jscope"
    ]
    assert not bad, f"_src must not import jscope/__init__.py: {bad}"


def test_layers_use_the_public_api_only():
    bad = [
        f"{i.importer}:{i.line} imports {i.module}"
        for i in _internal_edges()
        if i.importer.startswith("jscope.layers")
        and not (i.module in PUBLIC or i.module.startswith("jscope.layers"))
    ]
    assert not bad, bad


def test_only_the_checkpoint_modules_import_orbax():
    assert not _unexpected({"orbax"})


def test_only_jax_compat_touches_jax_internals():
    assert not _unexpected({"jax-internals"})


def test_no_private_name_crosses_modules():
    assert not _unexpected({"private"}), (
        f"promote these names or move them: {_unexpected({'private'})}"
    )


def test_no_module_is_over_the_line_limit():
    assert not _unexpected({"size"}), (
        f"modules over {MAX_LINES} lines: {_unexpected({'size'})}"
    )


def test_every_known_violation_still_occurs():
    gone = {entry: why for entry, why in KNOWN.items() if entry not in VIOLATIONS}
    assert not gone, f"these no longer occur: remove them from KNOWN: {gone}"


def test_the_checks_see_planted_violations(tmp_path, monkeypatch):
    def planted(importer, module, name=""):
        return _edge_violations(
            Import(importer, module, name, name or module, 1, False, True)
        )

    assert planted("jscope.errors", "jscope._src.scope", "_wrap_getter") == {
        ("upward", "jscope.errors", "jscope._src.scope", ""),
        ("private", "jscope.errors", "jscope._src.scope", "_wrap_getter"),
    }
    assert planted("jscope._src.run", "jscope._src.transforms") == {
        ("same-layer", "jscope._src.run", "jscope._src.transforms", "")
    }
    assert planted("jscope._src.checkpoint", "jscope._src.names") == {
        ("only", "jscope._src.checkpoint", "jscope._src.names", "")
    }
    assert planted("jscope._src.run", "orbax.checkpoint") == {
        ("orbax", "jscope._src.run", "orbax.checkpoint", "")
    }
    assert planted("jscope._src.scope", "jax._src.core") == {
        ("jax-internals", "jscope._src.scope", "jax._src.core", "")
    }
    assert planted("jscope._src.run", "jscope._src.scope") == set()
    # Imports inside functions are read too.
    planted_file = tmp_path / "planted.py"
    planted_file.write_text("def f():\n    from jscope._src import scope\n")
    monkeypatch.setitem(MODULES, "jscope._src.planted", planted_file)
    inner = [i for i in _imports("jscope._src.planted") if not i.top_level]
    assert [(i.module, i.name) for i in inner] == [("jscope._src.scope", "")]
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [
        ["a", "b", "c"]
    ]
