"""The specification in docs/design.md and the citations that point into it.

Tests, docstrings, benchmarks and examples cite the specification as "DESIGN" plus a
section sign and a number: a section (N) or one rule of it (N.M). Every such
citation must name a section or rule id that docs/design.md defines, and the
document's sections must be numbered 1 to 10 without gaps, each rule id sitting in
its own section and numbered from 1 without gaps.

This file spells the section sign only as an escape, so that the synthetic
citations below are not themselves scanned as citations of the real document.
"""

from __future__ import annotations

import pathlib
import re

import pytest

SIGN = "\N{SECTION SIGN}"
ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "design.md"
SCANNED_DIRS = ("tests", "jscope", "benchmarks", "examples", "docs")
SCANNED_SUFFIXES = {".py", ".md", ".rst", ".txt", ".toml", ".yml", ".yaml", ".cfg"}
SECTIONS = list(range(1, 11))

_ID = r"(\d+(?:\.\d+)*)"
_CITATION = re.compile(SIGN + _ID)
_SECTION = re.compile(r"^## " + SIGN + r"(\d+)\b(.*)$", re.MULTILINE)
_RULE = re.compile(r"\*\*" + SIGN + _ID + r" \S")


def sections(doc: str) -> list[int]:
    """The section numbers of the ``## <sign>N Title`` headings, in order."""
    return [int(m.group(1)) for m in _SECTION.finditer(doc)]


def rule_ids(doc: str) -> list[tuple[int, str]]:
    """``(enclosing section, rule id)`` for each bold ``**<sign>N.M Name`` lead."""
    heads = [(m.start(), int(m.group(1))) for m in _SECTION.finditer(doc)]
    out = []
    for m in _RULE.finditer(doc):
        within = [n for start, n in heads if start < m.start()]
        out.append((within[-1] if within else 0, m.group(1)))
    return out


def defined_ids(doc: str) -> set[str]:
    """Every id a citation may name: section numbers and rule ids."""
    return {str(n) for n in sections(doc)} | {rule for _, rule in rule_ids(doc)}


def outline_problems(doc: str, expected: list[int] = SECTIONS) -> list[str]:
    """What is wrong with the numbering of sections and rules (empty if nothing)."""
    problems = []
    found = sections(doc)
    if found != expected:
        problems.append(f"sections are numbered {found}, expected {expected}")
    seen: dict[int, list[int]] = {}
    for section, rule in rule_ids(doc):
        parts = [int(p) for p in rule.split(".")]
        if len(parts) != 2 or parts[0] != section:
            problems.append(
                f"rule {SIGN}{rule} is not of the form {SIGN}{section}.M under "
                f"section {SIGN}{section}"
            )
            continue
        seen.setdefault(section, []).append(parts[1])
    for section, numbers in seen.items():
        want = list(range(1, len(numbers) + 1))
        if numbers != want:
            problems.append(
                f"rules of {SIGN}{section} are numbered {numbers}, expected {want}"
            )
    return problems


def citations(text: str) -> list[tuple[int, str]]:
    """``(line number, id)`` of each citation in ``text``, definitions excluded."""
    out = []
    for m in _CITATION.finditer(text):
        before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        if before == "## " or before.endswith("**"):
            continue  # a heading or a rule's bold lead: a definition, not a citation
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def dangling(files: dict[str, str], defined: set[str]) -> list[str]:
    """``"file:line cites <sign>id"`` for every citation naming an undefined id."""
    return [
        f"{name}:{line} cites {SIGN}{ident}"
        for name, text in files.items()
        for line, ident in citations(text)
        if ident not in defined
    ]


def scanned_files(root: pathlib.Path = ROOT) -> dict[str, str]:
    """The text of every file whose citations are checked, by relative path."""
    paths = sorted(root.glob("*.md"))
    for sub in SCANNED_DIRS:
        paths += sorted(
            p
            for p in (root / sub).rglob("*")
            if p.is_file()
            and p.suffix in SCANNED_SUFFIXES
            and not any(
                part.startswith(".") or part == "__pycache__"
                for part in p.relative_to(root).parts
            )
        )
    return {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in paths}


# ------------------------------------------------------------- the real document


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_sections_are_numbered_one_to_ten_and_rules_within_them(doc):
    assert outline_problems(doc) == []


def test_every_section_has_rules(doc):
    with_rules = {section for section, _ in rule_ids(doc)}
    assert with_rules == set(SECTIONS)


def test_every_citation_names_a_section_or_rule_of_the_document(doc):
    files = scanned_files()
    problems = dangling(files, defined_ids(doc))
    assert problems == [], (
        "citations of the specification that docs/design.md does not define "
        "(add the rule there, or correct the citation):\n" + "\n".join(problems)
    )


def test_the_scan_sees_the_citations_of_the_test_suite():
    # Guards against a scan that silently reads nothing: the scope tests cite
    # section 3, and the suite as a whole cites several sections.
    files = scanned_files()
    assert "tests/test_scope.py" in files
    assert "README.md" in files and "docs/design.md" in files
    cited = {ident for name, text in files.items() for _, ident in citations(text)}
    assert {"3", "4", "9"} <= cited


def test_readme_links_the_specification():
    assert "docs/design.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# ------------------------------------------------- the parser, on synthetic input

S = SIGN
SYNTHETIC = f"""# Title
Intro citing {S}2.1.

## {S}1 First
- **{S}1.1 One.** Text.
- **{S}1.2 Two.** See {S}2.

## {S}2 Second
- **{S}2.1 Alone.** Text.
"""


def test_parser_reads_sections_rules_and_defined_ids():
    assert sections(SYNTHETIC) == [1, 2]
    assert rule_ids(SYNTHETIC) == [(1, "1.1"), (1, "1.2"), (2, "2.1")]
    assert defined_ids(SYNTHETIC) == {"1", "2", "1.1", "1.2", "2.1"}
    assert outline_problems(SYNTHETIC, expected=[1, 2]) == []


def test_parser_finds_each_citation_with_its_line_but_not_rule_leads():
    text = f"a {S}3-{S}4 b\n(DESIGN {S}2, {S}9.9). End of {S}1.\n**{S}7.1 Lead.**"
    assert citations(text) == [(1, "3"), (1, "4"), (2, "2"), (2, "9.9"), (2, "1")]
    assert citations(SYNTHETIC) == [(2, "2.1"), (6, "2")]


def test_a_citation_pointing_nowhere_is_reported():
    files = {
        "tests/test_ok.py": f'"""Rules of DESIGN {S}1 and {S}2.1."""',
        "tests/test_bad.py": f"x = 1\n# see DESIGN {S}2.2 and {S}3\n",
    }
    assert dangling(files, defined_ids(SYNTHETIC)) == [
        f"tests/test_bad.py:2 cites {S}2.2",
        f"tests/test_bad.py:2 cites {S}3",
    ]
    assert dangling({"tests/test_ok.py": files["tests/test_ok.py"]}, {"1", "2.1"}) == []


@pytest.mark.parametrize(
    ("doc_text", "message"),
    [
        (SYNTHETIC.replace(f"## {S}2 Second", f"## {S}3 Second"), "sections are"),
        (SYNTHETIC.replace(f"**{S}1.2 Two", f"**{S}1.3 Two"), "numbered [1, 3]"),
        (SYNTHETIC.replace(f"**{S}2.1 Alone", f"**{S}1.3 Alone"), "not of the form"),
        (SYNTHETIC.replace(f"**{S}2.1 Alone", f"**{S}2.1.1 Alone"), "not of the form"),
    ],
)
def test_a_gap_or_a_misplaced_rule_is_reported(doc_text, message):
    problems = outline_problems(doc_text, expected=[1, 2])
    assert problems and message in problems[0]
