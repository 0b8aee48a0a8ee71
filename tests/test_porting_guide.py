"""Every snippet of the porting guide runs, and asserts what the text says.

``docs/porting.md`` holds ```` ```python ```` blocks, run here, and
```` ```python tf1 ```` blocks showing the TF1 original, only compiled (TensorFlow
is never imported). The guide's first block holds the imports every section
starts from; the blocks of one ``##`` section run in order in one namespace, so a
later block may use what an earlier one defined. The README's "Porting from TF1"
section's blocks run the same way, on their own. Snippets run from the
repository root, where they find ``examples/data/port_tf1``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "porting.md"
README = ROOT / "README.md"
README_SECTION = "## Porting from TF1"


@dataclasses.dataclass(frozen=True)
class Block:
    kind: str  # "python" (run) or "tf1" (compiled only)
    code: str
    line: int  # of the first code line, 1-based
    section: str  # the enclosing "## " heading, "" before the first


_FENCE = re.compile(r"^```(\S*)(?:[ \t]+(\S+))?[ \t]*$")


def blocks(text: str) -> list[Block]:
    """The ```python and ```python tf1 blocks of a Markdown text, in order."""
    out: list[Block] = []
    section, lines, kind, start = "", [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if kind is not None:
            if line.startswith("```"):
                if kind:
                    out.append(Block(kind, "\n".join(lines) + "\n", start, section))
                kind, lines = None, []
            else:
                lines.append(line)
        elif fence:
            lang, tag = fence.groups()
            kind = ("tf1" if tag == "tf1" else "python") if lang == "python" else ""
            start = number + 1
        elif line.startswith("## "):
            section = line[3:].strip()
    assert kind is None, "an unclosed code fence"
    return out


def run_blocks(chosen: list[Block], namespace: dict, source: str) -> None:
    for block in chosen:
        code = compile(block.code, f"{source}:{block.line}", "exec")
        exec(code, namespace)  # noqa: S102 (the guide's own snippets)


GUIDE_BLOCKS = blocks(GUIDE.read_text(encoding="utf-8"))
PRELUDE = GUIDE_BLOCKS[0]
RUNNABLE = [b for b in GUIDE_BLOCKS[1:] if b.kind == "python"]
SECTIONS = list(dict.fromkeys(b.section for b in RUNNABLE))


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    assert README_SECTION in text
    section = text.split(README_SECTION, 1)[1]
    return section.split("\n## ", 1)[0]


# ----------------------------------------------------------------- snippets


@pytest.mark.parametrize("section", SECTIONS)
def test_guide_section_runs(section, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "porting_guide"}
    run_blocks([PRELUDE], namespace, "docs/porting.md")
    run_blocks(
        [b for b in RUNNABLE if b.section == section], namespace, "docs/porting.md"
    )


@pytest.mark.parametrize(
    "block", [b for b in GUIDE_BLOCKS if b.kind == "tf1"], ids=lambda b: f"line{b.line}"
)
def test_guide_tf1_originals_parse(block):
    compile(block.code, f"docs/porting.md:{block.line}", "exec")
    assert "tf." in block.code


def test_readme_section_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    chosen = [b for b in blocks(_readme_section()) if b.kind == "python"]
    assert chosen, "the README's porting section has no python block"
    run_blocks(chosen, {"__name__": "readme_porting"}, "README.md")


# -------------------------------------------------------- what the guide holds


def test_prelude_is_only_imports():
    assert PRELUDE.kind == "python" and PRELUDE.section == ""
    for line in PRELUDE.code.splitlines():
        assert not line or line.startswith(("import ", "from ")), line


def test_every_runnable_block_asserts_something():
    for block in RUNNABLE:
        assert re.search(r"^\s*assert ", block.code, re.MULTILINE), block.line


@pytest.mark.parametrize(
    "section",
    [
        "The swap table",
        "A session becomes init and apply",
        "State and update ops",
        "Data-dependent initialization",
        "Sharing variables: the reuse patterns",
        "Argument scopes",
        "Moving averages of the weights",
        "Random ops",
        "Loading the old TF1 checkpoint",
        "Deliberate differences",
    ],
)
def test_guide_has_section(section):
    assert section in [b.section for b in GUIDE_BLOCKS] or (
        f"\n## {section}\n" in GUIDE.read_text(encoding="utf-8")
    )


def test_swap_table_names_each_tf1_api_and_its_counterpart():
    text = GUIDE.read_text(encoding="utf-8")
    table = text.split("## The swap table", 1)[1].split("\n## ", 1)[0]
    pairs = {
        "tf.get_variable": "js.get_variable",
        "tf.variable_scope": "js.variable_scope",
        "tf.AUTO_REUSE": "js.AUTO_REUSE",
        "tf.Variable": "js.Variable",
        "tf.assign": "js.assign",
        "tf.make_template": "js.make_template",
        "tf.global_variables_initializer": "js.init",
        "sess.run": "js.apply",
        "tf.random_normal": "js.next_rng_key",
        "tf.layers.dense": "js.layers.dense",
        "tf.train.Saver": "js.Saver",
        "saver.restore": "js.tf1.restore",
        "tf.train.list_variables": "js.tf1.list_variables",
        "batch_normalization": "batch_normalization",
        "slim.arg_scope": "slim.arg_scope",
        "tf.contrib.layers": "jscope.slim",
        "tf.train.ExponentialMovingAverage": "js.ExponentialMovingAverage",
    }
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for tf1, ours in pairs.items():
        cells = [r.split(" | ") for r in rows]
        assert any(tf1 in c[0] and ours in c[1] for c in cells), (tf1, ours)


def test_readme_links_the_guide_and_the_example():
    section = _readme_section()
    assert "docs/porting.md" in section
    assert "examples/port_tf1.py" in section


def test_extraction_sees_fences_and_sections():
    text = "\n".join(
        [
            "```python",
            "import x",
            "```",
            "## One",
            "```python tf1",
            "tf.a()",
            "```",
            "```bash",
            "ls",
            "```",
            "```python",
            "assert 1",
            "```",
        ]
    )
    found = blocks(text)
    assert [(b.kind, b.code, b.line, b.section) for b in found] == [
        ("python", "import x\n", 2, ""),
        ("tf1", "tf.a()\n", 6, "One"),
        ("python", "assert 1\n", 12, "One"),
    ]


def test_a_false_assertion_in_a_snippet_fails():
    bad = blocks("## S\n```python\nassert 1 == 2, 'the text lied'\n```\n")
    with pytest.raises(AssertionError, match="the text lied"):
        run_blocks(bad, {}, "bad.md")
