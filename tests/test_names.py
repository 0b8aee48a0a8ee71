"""Paths: validation, joining, `stable_hash` and `Uniquifier`."""

import os
import pickle
import re
import string
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jscope import errors
from jscope._src import names

ALLOWED = frozenset(string.ascii_letters + string.digits + "_.-")
PATTERN = re.escape("[A-Za-z0-9_.\\-]+")


def is_valid(name):
    """The naming rule of DESIGN §3, written without a regex."""
    parts = name.split("/")
    return all(p and set(p) <= ALLOWED and not p.startswith("-") for p in parts)


# --------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    "name",
    ["w", "W", "_w", "_", "0", "a.b", "a-b", "w-", "a/b", "a/b/c", "A_9.x-y/_z", "..."],
)
def test_validate_returns_valid_names_unchanged(name):
    assert names.validate(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "a//b",
        "/a",
        "a/",
        "a b",
        " ",
        "a\tb",
        "a\nb",
        "a:0",
        "caf\u00e9",
        "\u00b5",
        "\u0391",  # Greek capital alpha, looks like "A"
        "a\\b",
        "a>b",
        "a<b",
        "a*b",
        "-a",
        "a/-b",
        "a/b/",
    ],
    ids=repr,
)
def test_validate_rejects_bad_names(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))) as info:
        names.validate(name)
    err = info.value
    assert isinstance(err, errors.InvalidNameError)
    assert err.path == name
    assert re.search(PATTERN, str(err))


def test_validate_names_what_is_named():
    with pytest.raises(errors.InvalidNameError, match="variable scope name 'a b'"):
        names.validate("a b", "variable scope")
    with pytest.raises(errors.InvalidNameError, match="variable name 'a b'"):
        names.validate("a b")


@pytest.mark.parametrize("name", [None, 1, b"w", ["w"]], ids=repr)
def test_validate_rejects_non_strings_with_type_error(name):
    with pytest.raises(TypeError, match="must be a str"):
        names.validate(name)


def test_validate_error_pickles():
    with pytest.raises(errors.InvalidNameError) as info:
        names.validate("a//b")
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is errors.InvalidNameError
    assert str(back) == str(info.value)
    assert back.path == "a//b"


@given(st.text(alphabet=string.ascii_letters[:3] + "_.-/ :\u00e9\\", max_size=12))
def test_validate_agrees_with_the_rule(name):
    if is_valid(name):
        assert names.validate(name) == name
    else:
        with pytest.raises(errors.InvalidNameError):
            names.validate(name)


@given(st.text(max_size=20))
def test_suggested_name_is_valid(name):
    if is_valid(name):
        return
    with pytest.raises(errors.InvalidNameError) as info:
        names.validate(name)
    suggestion = re.search(r"e\.g\. to ('.*')\.$", str(info.value))
    assert suggestion is not None
    assert is_valid(eval(suggestion.group(1)))  # a repr of a str


# ------------------------------------------------------------------------- join


@pytest.mark.parametrize(
    ("prefix", "name", "want"),
    [("", "w", "w"), ("a", "w", "a/w"), ("a/b", "w", "a/b/w"), ("a", "b/w", "a/b/w")],
)
def test_join(prefix, name, want):
    assert names.join(prefix, name) == want


# ------------------------------------------------------------------ stable_hash


PATHS = ["", "w", "n1/W", "n1/w", "n2/W", "a/b/c/d/e", "caf\u00e9"]


def test_stable_hash_is_a_31_bit_int_and_deterministic():
    for path in PATHS:
        h = names.stable_hash(path)
        assert type(h) is int
        assert 0 <= h < 2**31
        assert names.stable_hash(path) == h
        assert names.stable_hash(str(path)) == h
        # Not cached by identity: an equal string built at run time agrees.
        assert names.stable_hash("".join(list(path))) == h


def test_stable_hash_separates_paths():
    paths = [f"layer_{i}/{leaf}" for i in range(500) for leaf in ("W", "b")]
    assert len({names.stable_hash(p) for p in paths}) == len(paths)
    assert names.stable_hash("n1/W") != names.stable_hash("n1/w")


def test_stable_hash_is_the_same_in_every_process():
    code = (
        "from jscope._src.names import stable_hash; "
        f"print([stable_hash(p) for p in {PATHS!r}], hash('n1/W'))"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split("] ")
        outputs.append(out)
    (hashes_1, salted_1), (hashes_2, salted_2) = outputs
    assert hashes_1 == hashes_2
    assert hashes_1 + "]" == str([names.stable_hash(p) for p in PATHS])
    assert salted_1 != salted_2  # Python's own hash is salted; ours is not


# -------------------------------------------------------------------- Uniquifier


def test_uniquifier_hands_out_name_then_numbered_names():
    u = names.Uniquifier()
    assert [u.unique("x") for _ in range(4)] == ["x", "x_1", "x_2", "x_3"]
    assert u.unique("y") == "y"


def test_uniquifier_skips_names_in_use():
    u = names.Uniquifier()
    assert u.unique("x_1") == "x_1"
    assert u.unique("x") == "x"
    assert u.unique("x") == "x_2"
    assert u.unique("x_1") == "x_1_1"


def test_uniquifier_mark_records_without_renaming():
    u = names.Uniquifier()
    assert not u.in_use("w")
    u.mark("w")
    assert u.in_use("w")
    assert not u.in_use("w_1")
    assert u.unique("w") == "w_1"
    assert u.in_use("w_1")


def test_uniquifier_is_case_sensitive():
    u = names.Uniquifier()
    assert [u.unique("A"), u.unique("a"), u.unique("A")] == ["A", "a", "A_1"]


def test_uniquifiers_are_independent():
    u, v = names.Uniquifier(), names.Uniquifier()
    assert u.unique("x") == v.unique("x") == "x"


OPS = st.lists(
    st.tuples(
        st.sampled_from(["unique", "mark"]),
        st.sampled_from(["x", "x_1", "x_2", "x_1_1", "y", "y_1"]),
    ),
    max_size=25,
)


PATH_OPS = st.lists(
    st.tuples(
        st.sampled_from(["unique", "mark", "path", "other kind"]),
        st.sampled_from(["x", "x_1", "x_2", "x_1_1", "y", "y_1"]),
    ),
    max_size=25,
)


@given(PATH_OPS)
def test_uniquifier_counts_paths_of_its_kind_as_marks(ops):
    """A name in ``paths`` with the ``once`` kind is in use as if marked once.

    The same operations run on a uniquifier that reads a path dict and on one
    that is marked instead: both must hand out the same names.
    """
    once, other = object(), object()
    paths: dict = {}
    u = names.Uniquifier(paths, once)
    marked = names.Uniquifier()
    for op, name in ops:
        if op in ("path", "other kind"):
            if name in paths:
                continue  # a run records each path once
            if op == "path":
                paths[name] = once  # what get_variable does
                marked.mark(name)
            else:
                paths[name] = other  # not this kind: not in use by itself
            continue
        if op == "mark":
            u.mark(name)
            marked.mark(name)
            continue
        assert u.unique(name) == marked.unique(name)
    for name in ["x", "x_1", "x_2", "x_1_1", "y", "y_1"]:
        assert u.in_use(name) == marked.in_use(name), name
    copy = u.copy(dict(paths))
    assert copy.unique("x") == u.unique("x")


@given(OPS)
def test_uniquifier_matches_tf1_model(ops):
    """Each name is new; a taken name gets the first free ``name_i``, i >= 1."""
    u = names.Uniquifier()
    used = set()
    for op, name in ops:
        if op == "mark":
            if name in used:
                continue  # jscope marks each path once
            u.mark(name)
            used.add(name)
            continue
        want = name
        i = 1
        while want in used:
            want = f"{name}_{i}"
            i += 1
        got = u.unique(name)
        assert got == want
        used.add(got)
        assert all(u.in_use(n) for n in used)
