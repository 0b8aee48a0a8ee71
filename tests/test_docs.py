"""The documentation site: its code runs, and its API reference is complete.

Every ```` ```python ```` block of every page under ``docs/`` runs. The blocks of
one page run in order in one namespace, so a page is one program, in a fresh
Python per page (a fresh JAX) and a temporary working directory. HTML comments,
invisible on the site, steer the run:

- ``<!-- docs-test: devices=8 -->`` as a page's first line: the page runs with 8
  simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
- ``<!-- docs-test: setup ... -->``: Python run before the page's first block,
  defining the names that a page of sketches (``docs/design.md``) uses.
- ``<!-- docs-test: in-run -->`` before a block: the block runs inside a function
  run by `js.init`, as model code does.
- ``<!-- docs-test: signature -->`` before a block: the block is a signature
  synopsis, ``js.name(a, b=None, *, c=True)``, checked against the real
  signature (names, kinds, defaults, in order).

There is no way to skip a block or a page: ``<!-- docs-test: skip -->`` is an
error, and so is a fence in a language this test does not know (Python runs;
shell, text and data blocks do not). ```` ```python tf1 ```` blocks show TF1
originals: they are compiled, never run (TensorFlow is not installed).

``docs/porting.md`` is run by ``tests/test_porting_guide.py``, section by section
with its prelude; this file checks that that test sees every block of it. The
README is not run here: it is not one program (its checkpoint and TF1 snippets
are fragments), and its porting and slim sections run in their own tests.

The API reference (``docs/api/*.md``) must name, with a mkdocstrings ``:::``
line, every public name of every public module, and nothing else; every public
function and class says that module in ``__module__``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import pathlib
import pickle
import re
import subprocess
import sys
import types

import pytest
from helpers import run_source

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
MKDOCS = ROOT / "mkdocs.yml"

# Pages whose blocks another test runs, and that test.
DELEGATED = {"porting.md": "test_porting_guide.py"}

PUBLIC_MODULES = [
    "jscope",
    "jscope.layers",
    "jscope.initializers",
    "jscope.errors",
    "jscope.slim",
    "jscope.tf1",
    "jscope.typing",
]

# Fence languages that are shown, never run.
NOT_RUN = {
    "",
    "text",
    "bash",
    "console",
    "sh",
    "shell",
    "toml",
    "yaml",
    "json",
    "ini",
    "diff",
    "markdown",
}
DIRECTIVES = {"in-run", "signature"}


class DocsTestError(ValueError):
    """A page's markup that this test refuses."""


@dataclasses.dataclass(frozen=True)
class Block:
    code: str
    line: int  # of the first code line, 1-based
    mode: str  # "run", "in-run", "signature" or "tf1" (compiled only)


@dataclasses.dataclass(frozen=True)
class Page:
    devices: int
    setup: str
    setup_line: int
    blocks: tuple[Block, ...]


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>.*)$")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(?P<what>[^\n]*?)\s*(?P<end>-->)?\s*$")


def parse(text: str) -> Page:
    """The runnable blocks and settings of one Markdown page."""
    lines = text.splitlines()
    devices, setup, setup_line = 1, "", 0
    blocks: list[Block] = []
    pending: str | None = None
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        directive = _DIRECTIVE.match(line.strip())
        if directive:
            what = directive["what"]
            if what == "skip" or what.startswith("skip "):
                raise DocsTestError(
                    f"line {number}: pages and blocks cannot be skipped; make the "
                    "code run (small shapes), or show it as ```text"
                )
            if what.startswith("devices="):
                if number != 1:
                    raise DocsTestError(f"line {number}: devices= must be line 1")
                devices = int(what.removeprefix("devices="))
            elif what == "setup" and not directive["end"]:
                end = lines.index("-->", number)
                setup, setup_line = "\n".join(lines[number:end]) + "\n", number + 1
                number = end + 1
            elif what in DIRECTIVES and directive["end"]:
                pending = what
            else:
                raise DocsTestError(f"line {number}: unknown directive {line!r}")
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip():
                pending = None  # a directive applies to the block right after it
            continue
        info = fence["info"].strip().split()
        language = info[0] if info else ""
        indent, ticks = fence["indent"], fence["ticks"]
        start, body = number + 1, []
        while number < len(lines) and lines[number].strip() != ticks:
            body.append(lines[number].removeprefix(indent))
            number += 1
        if number == len(lines):
            raise DocsTestError(f"line {start - 1}: an unclosed code fence")
        number += 1
        if language in ("python", "py"):
            tags = info[1:]
            if tags not in ([], ["tf1"]):
                raise DocsTestError(f"line {start - 1}: unknown tags {tags}")
            mode = "tf1" if tags else (pending or "run")
            blocks.append(Block("\n".join(body) + "\n", start, mode))
        elif language not in NOT_RUN:
            raise DocsTestError(
                f"line {start - 1}: a ```{language} block: ```python blocks run, "
                f"{sorted(NOT_RUN - {''})} are shown only"
            )
        elif pending:
            raise DocsTestError(
                f"line {start - 1}: {pending} before a non-Python block"
            )
        pending = None
    return Page(devices, setup, setup_line, tuple(blocks))


def _source(code: str, line: int) -> str:
    # Padded so that a traceback names the page's own line numbers.
    return "\n" * (line - 1) + code


def check_signature(code: str, namespace: dict) -> None:
    """Asserts that a synopsis ``js.f(a, b=1, *, c=None)`` is f's signature."""
    match = re.fullmatch(r"\s*([\w.]+)\((.*)\)\s*", code, re.DOTALL)
    assert match, f"not a synopsis js.name(...): {code!r}"
    target = eval(match[1], namespace)  # noqa: S307 (the page's own name)
    tree = ast.parse(f"def synopsis({match[2]}): pass")
    synopsis = tree.body[0]
    assert isinstance(synopsis, ast.FunctionDef)
    arguments = synopsis.args
    shown: list[tuple[str, str, object]] = []
    plain = arguments.args
    defaults = [None] * (len(plain) - len(arguments.defaults)) + arguments.defaults
    for argument, default in zip(plain, defaults, strict=True):
        kind = "POSITIONAL_OR_KEYWORD"
        shown.append((argument.arg, kind, _literal(default)))
    if arguments.vararg:
        shown.append((arguments.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for argument, default in zip(
        arguments.kwonlyargs, arguments.kw_defaults, strict=True
    ):
        shown.append((argument.arg, "KEYWORD_ONLY", _literal(default)))
    if arguments.kwarg:
        shown.append((arguments.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    real = [
        (p.name, p.kind.name, p.default)
        for p in inspect.signature(target).parameters.values()
    ]
    assert shown == real, (
        f"the synopsis of {match[1]} is not its signature:\n"
        f"  shown: {shown}\n  real:  {real}"
    )


def _literal(node: ast.expr | None) -> object:
    return inspect.Parameter.empty if node is None else ast.literal_eval(node)


def run_page(path: pathlib.Path) -> None:
    """Runs one page's blocks in order in one namespace (in this process)."""
    import warnings  # noqa: PLC0415

    warnings.simplefilter("error")  # as pytest's filterwarnings = ["error"]
    page = parse(path.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "__main__"}
    if page.setup:
        exec(
            compile(_source(page.setup, page.setup_line), str(path), "exec"), namespace
        )  # noqa: S102
    for block in page.blocks:
        if block.mode == "signature":
            check_signature(block.code, namespace)
            continue
        code = compile(_source(block.code, block.line), str(path), "exec")
        if block.mode == "run":
            exec(code, namespace)  # noqa: S102 (the page's own code)
        elif block.mode == "in-run":
            import jax  # noqa: PLC0415

            import jscope as js  # noqa: PLC0415

            def body(code=code):
                exec(code, namespace)  # noqa: S102

            js.init(body, jax.random.key(0))
    print(f"{path}: {len(page.blocks)} blocks ran")


def run_page_in_subprocess(
    path: pathlib.Path, cwd: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    page = parse(path.read_text(encoding="utf-8"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    if page.devices > 1:
        flag = f"--xla_force_host_platform_device_count={page.devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, __file__, str(path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def _pages() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)


def _name(path: pathlib.Path) -> str:
    return path.relative_to(DOCS).as_posix()


RUN_PAGES = [
    p
    for p in _pages()
    if _name(p) not in DELEGATED and parse(p.read_text(encoding="utf-8")).blocks
]


# ------------------------------------------------------------------- the pages


@pytest.mark.parametrize("path", RUN_PAGES, ids=_name)
def test_page_runs(path, tmp_path):
    result = run_page_in_subprocess(path, tmp_path)
    assert result.returncode == 0, (
        f"{_name(path)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    blocks = len(parse(path.read_text(encoding="utf-8")).blocks)
    assert f": {blocks} blocks ran" in result.stdout


def test_the_pages_that_must_run_do():
    names = [_name(p) for p in RUN_PAGES]
    for page in ["index.md", "getting-started.md", "design.md"]:
        assert page in names
    assert parse((DOCS / "design.md").read_text(encoding="utf-8")).devices == 8


@pytest.mark.parametrize("page, test", DELEGATED.items())
def test_a_delegated_page_runs_every_block_in_its_own_test(page, test):
    other = importlib.import_module(test.removesuffix(".py"))
    text = (DOCS / page).read_text(encoding="utf-8")
    ours = [(b.line, b.code, b.mode == "tf1") for b in parse(text).blocks]
    theirs = [(b.line, b.code, b.kind == "tf1") for b in other.blocks(text)]
    assert ours == theirs
    assert any(not tf1 for _, _, tf1 in ours)


def test_every_page_is_in_the_navigation():
    nav = set(
        re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?(\S+\.md)\s*$", MKDOCS.read_text(), re.M)
    )
    pages = {_name(p) for p in _pages()}
    assert pages == nav, (pages - nav, nav - pages)


# ---------------------------------------------------------------- the runner


def _run_text(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return run_page_in_subprocess(page, tmp_path)


def test_blocks_share_one_namespace_and_a_false_assertion_fails(tmp_path):
    ok = _run_text(
        tmp_path, "```python\nx = 2\n```\ntext\n```python\nassert x == 2\n```\n"
    )
    assert ok.returncode == 0, ok.stderr
    bad = _run_text(tmp_path, "# T\n\n```python\nassert 1 == 2, 'the page lied'\n```\n")
    assert bad.returncode != 0
    assert "the page lied" in bad.stderr
    assert 'page.md", line 4' in bad.stderr  # the page's own line


def test_devices_setup_and_in_run_directives(tmp_path):
    text = (
        "<!-- docs-test: devices=8 -->\n"
        "<!-- docs-test: setup\nimport jax, jscope as js\nn = 3\n-->\n"
        "```python\nassert jax.device_count() == 8 and n == 3\n```\n"
        "<!-- docs-test: in-run -->\n"
        "```python\nw = js.get_variable('w', (n,))\nassert js.is_initializing()\n```\n"
        "```python\nassert w.shape == (3,)\n```\n"
    )
    result = _run_text(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert ": 3 blocks ran" in result.stdout


def test_a_warning_fails_the_page(tmp_path):
    result = _run_text(
        tmp_path, "```python\nimport warnings\nwarnings.warn('w')\n```\n"
    )
    assert result.returncode != 0
    assert "UserWarning" in result.stderr


def test_a_signature_synopsis_is_checked_against_the_code():
    import jscope as js

    namespace = {"js": js}
    check_signature(
        'js.flatten(tree, prefix="")',
        namespace,
    )
    with pytest.raises(AssertionError, match="is not its signature"):
        check_signature("js.get_variable(name, shape=None)", namespace)
    with pytest.raises(AssertionError, match="is not its signature"):
        check_signature(
            "js.get_variable(name, shape=(), dtype=None, initializer=None, "
            "regularizer=None, *, trainable=True, collection=None, axes=None, "
            "**tf1_kwargs)",
            namespace,
        )


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- docs-test: skip -->\n", "cannot be skipped"),
        ("x\n<!-- docs-test: devices=8 -->\n", "must be line 1"),
        ("<!-- docs-test: fast -->\n", "unknown directive"),
        ("```pycon\n>>> 1\n```\n", "a ```pycon block"),
        ("```python title\nx\n```\n", "unknown tags"),
        ("```python\nx\n", "unclosed"),
        ("<!-- docs-test: in-run -->\n```bash\nls\n```\n", "before a non-Python"),
    ],
)
def test_refused_markup(text, message):
    with pytest.raises(DocsTestError, match=message):
        parse(text)


def test_parse_reads_fences_modes_and_indented_blocks():
    text = "\n".join(
        [
            "<!-- docs-test: signature -->",
            "```python",
            "js.f(a)",
            "```",
            "- item",
            "",
            "    ```python",
            "    if True:",
            "        y = 1",
            "    ```",
            "```bash",
            "ls",
            "```",
            "```python tf1",
            "tf.a()",
            "```",
            "<!-- docs-test: in-run -->",
            "text between: the directive is spent",
            "```python",
            "z = 1",
            "```",
        ]
    )
    page = parse(text)
    assert page.devices == 1 and page.setup == ""
    assert [(b.mode, b.line, b.code) for b in page.blocks] == [
        ("signature", 3, "js.f(a)\n"),
        ("run", 8, "if True:\n    y = 1\n"),
        ("tf1", 15, "tf.a()\n"),
        ("run", 20, "z = 1\n"),
    ]


def _hooks():
    spec = importlib.util.spec_from_file_location("hooks", DOCS / "_ext" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_continuations_are_indented_for_python_markdown():
    written = "\n".join(
        [
            "- **1.** text",
            "  more text",
            "",
            "  ```python",
            "  for x in y:",
            "      pass",
            "  ```",
            "",
            "  | a | b |",
            "  - nested",
            "    continued",
            "",
            "Outside.",
            "    indented code",
        ]
    )
    assert _hooks().commonmark_lists(written).split("\n") == [
        "- **1.** text",
        "    more text",
        "",
        "    ```python",
        "    for x in y:",
        "        pass",
        "    ```",
        "",
        "    | a | b |",
        "    - nested",
        "        continued",
        "",
        "Outside.",
        "    indented code",
    ]


# ----------------------------------------------------------- the API reference


def _documented() -> set[str]:
    found: set[str] = set()
    for page in API.glob("*.md"):
        found |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M))
    return found


def _public(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    return list(module.__all__)


def _home(module_name: str, name: str) -> str:
    """Where the reference documents a public name: its own module's entry."""
    value = getattr(importlib.import_module(module_name), name)
    if isinstance(value, types.ModuleType):
        return value.__name__
    owner = getattr(value, "__module__", None)
    if (
        owner in PUBLIC_MODULES
        and owner != module_name
        and getattr(importlib.import_module(owner), name, None) is value
    ):
        # A re-export (js.CheckpointError is jscope.errors.CheckpointError).
        return f"{owner}.{name}"
    return f"{module_name}.{name}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_reference_documents_every_public_name(module_name):
    documented = _documented()
    missing = [
        name
        for name in _public(module_name)
        if _home(module_name, name) not in documented
    ]
    assert not missing, f"docs/api/ has no '::: ...' line for {module_name}: {missing}"


def test_the_reference_documents_only_public_names():
    public = {_home(m, n) for m in PUBLIC_MODULES for n in _public(m)}
    public |= set(PUBLIC_MODULES)
    assert _documented() - public == set()


def test_every_public_module_lists_its_names_once():
    for module_name in PUBLIC_MODULES:
        names = _public(module_name)
        assert len(names) == len(set(names)), module_name
        module = importlib.import_module(module_name)
        public = {n for n in dir(module) if not n.startswith("_")}
        # dir() may hold imported helpers (jax, Any); every __all__ name is in it.
        assert set(names) <= public | {"tf1"}, module_name


# ------------------------------------------------------ public names' modules

# The one public class whose __module__ names no module that holds it: the type
# of js.AUTO_REUSE, which pickles as the constant jscope.AUTO_REUSE.
MODULE_EXCEPTIONS = {"jscope.typing.AutoReuse"}


def _functions_and_classes() -> list[tuple[str, str]]:
    found = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type | types.FunctionType):
                found.append((module_name, name))
    return found


@pytest.mark.parametrize("module_name, name", _functions_and_classes())
def test_public_names_carry_a_public_module(module_name, name):
    value = getattr(importlib.import_module(module_name), name)
    if f"{module_name}.{name}" in MODULE_EXCEPTIONS:
        assert value.__module__ == "jscope"
        return
    assert value.__module__ in PUBLIC_MODULES, value.__module__
    assert getattr(importlib.import_module(value.__module__), name) is value
    if isinstance(value, types.FunctionType):
        assert pickle.loads(pickle.dumps(value)) is value


def test_a_lazy_name_has_its_public_module_in_a_fresh_process():
    code = (
        "import jscope as js\n"
        "print(js.Saver.__module__, js.list_variables.__module__,"
        " js.verify_checkpoint.__module__, js.load_variable.__module__,"
        " js.tf1.restore.__module__, js.apply.__module__)"
    )
    out = run_source(code).stdout
    assert out.split() == ["jscope"] * 4 + ["jscope.tf1", "jscope"]


if __name__ == "__main__":
    run_page(pathlib.Path(sys.argv[1]))
