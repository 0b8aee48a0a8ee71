"""`js.ShardingRules` (DESIGN §8.1-§8.3): precedence, validation, unused rules.

Single device: the mesh is a `jax.sharding.AbstractMesh` (or a 1-device `Mesh`).
The properties play random rules and variables against a small model of the
resolution written here in plain Python:

1. ``rules.spec(path, shape, axes)`` is the spec of the first ``paths`` regex
   that `re.search`es the path, else the logical axes through the ``axes``
   table, else ``P()`` (without trailing None entries); or it raises
   `ShardingError` exactly when the model says the spec does not fit (rank,
   divisibility, unknown logical axis, one mesh axis twice), with the path, the
   shape, the spec and the mesh in the message.
2. A matching path rule wins whatever the variable's logical axes are.
3. Constructing rules refuses a regex that does not compile, an unknown mesh
   axis and a mesh axis used twice, naming the rule.
4. ``rules.unused(tree)`` lists the regexes that decide no variable's spec.

Example counts are multiples of the hypothesis profile's base (`helpers.examples`).
"""

from __future__ import annotations

import math
import pickle
import re

import jax
import pytest
from helpers import examples
from hypothesis import given, note, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import jscope as js
from jscope import errors

MESH_AXES = ("data", "model", "pipe")
LOGICAL = ("batch", "embed", "mlp", "heads")
REGEXES = ("kernel$", "^h0/", "attn", r"(.*/)?mlp/.*kernel$", "^bias$", "w")
PARTS = ("h0", "attn", "mlp", "kernel", "bias", "w")


# ---------------------------------------------------------------------- the model


class Refused(Exception):
    """The model's ShardingError."""


def canonical(spec):
    """Specs come back without trailing None entries, as array.sharding.spec."""
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def model_fit(spec, shape, sizes):
    if len(spec) == 0:
        return spec
    if len(spec) != len(shape):
        raise Refused("rank")
    for size, entry in zip(shape, spec, strict=True):
        if entry is None:
            continue
        names = (entry,) if isinstance(entry, str) else entry
        if size % math.prod(sizes[n] for n in names):
            raise Refused("divisible")
    return canonical(spec)


def model_spec(sizes, paths, table, path, shape, axes):
    for regex, spec in paths:
        if re.search(regex, path):
            return model_fit(P(*spec), shape, sizes)
    if axes is None or table is None:
        return P()
    entries = []
    for name in axes:
        if name is None:
            entries.append(None)
        elif name not in table:
            raise Refused("unknown logical axis")
        else:
            entries.append(table[name])
    used = [
        n for e in entries if e is not None for n in ((e,) if isinstance(e, str) else e)
    ]
    if len(used) != len(set(used)):
        raise Refused("twice")
    return model_fit(P(*entries), shape, sizes)


# -------------------------------------------------------------------- strategies


@st.composite
def meshes(draw):
    names = draw(
        st.lists(st.sampled_from(MESH_AXES), min_size=1, max_size=3, unique=True)
    )
    sizes = draw(
        st.lists(
            st.sampled_from([1, 2, 3, 4]), min_size=len(names), max_size=len(names)
        )
    )
    return dict(zip(names, sizes, strict=True))


def entries(names):
    """One spec entry over distinct mesh axes ``names``: None, one, or a tuple."""
    choices = [st.none(), st.sampled_from(names)]
    if len(names) > 1:
        pairs = st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True)
        choices.append(pairs.map(tuple))
    return st.one_of(*choices)


@st.composite
def valid_specs(draw, names):
    """A spec of rank 0-3 using each mesh axis at most once."""
    rank = draw(st.integers(0, 3))
    spec, used = [], set()
    for _ in range(rank):
        entry = draw(entries(list(names)))
        flat = () if entry is None else (entry,) if isinstance(entry, str) else entry
        if used & set(flat):
            entry, flat = None, ()
        used |= set(flat)
        spec.append(entry)
    return tuple(spec)


@st.composite
def rule_sets(draw):
    sizes = draw(meshes())
    names = list(sizes)
    paths = draw(
        st.lists(st.tuples(st.sampled_from(REGEXES), valid_specs(names)), max_size=3)
    )
    table = draw(
        st.none()
        | st.dictionaries(st.sampled_from(LOGICAL[:3]), entries(names), max_size=3)
    )
    return sizes, paths, table


@st.composite
def variables(draw):
    path = "/".join(draw(st.lists(st.sampled_from(PARTS), min_size=1, max_size=3)))
    shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 12]), max_size=3)))
    axes = draw(
        st.none() | st.tuples(*[st.sampled_from((None, *LOGICAL)) for _ in shape])
    )
    return path, shape, axes


def make_rules(sizes, paths, table):
    mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
    return js.ShardingRules(mesh, paths=paths, axes=table)


# -------------------------------------------------------------------- properties


@settings(max_examples=examples(2), deadline=None)
@given(rule_sets(), variables())
def test_spec_is_the_model_spec_or_a_sharding_error(rules_args, variable):
    sizes, paths, table = rules_args
    path, shape, axes = variable
    rules = make_rules(sizes, paths, table)
    try:
        expected = model_spec(sizes, paths, table, path, shape, axes)
    except Refused as why:
        note(f"refused: {why}")
        with pytest.raises(errors.ShardingError) as e:
            rules.spec(path, shape, axes)
        msg = str(e.value)
        assert e.value.path == path
        assert f"variable {path}" in msg.lower()
        assert str(sizes) in msg  # the mesh: axis names and sizes
        if str(why) in ("rank", "divisible"):
            assert str(shape) in msg and "P(" in msg
        assert isinstance(e.value, ValueError)
        return
    got = rules.spec(path, shape, axes)
    assert got == expected
    assert isinstance(got, P)


@settings(max_examples=examples(1), deadline=None)
@given(rule_sets(), variables(), variables())
def test_a_matching_path_rule_wins_over_logical_axes(rules_args, variable, other):
    sizes, paths, table = rules_args
    path, shape, _ = variable
    other_axes = (
        other[2] if other[2] is not None and len(other[2]) == len(shape) else None
    )
    rules = make_rules(sizes, paths, table)
    if not any(re.search(regex, path) for regex, _ in paths):
        return
    outcomes = []
    for axes in (None, other_axes):
        try:
            outcomes.append(rules.spec(path, shape, axes))
        except errors.ShardingError as e:
            outcomes.append(type(e))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=examples(0.25), deadline=None)
@given(meshes(), st.data())
def test_construction_refuses_unknown_and_repeated_mesh_axes(sizes, data):
    name = data.draw(st.sampled_from(list(sizes)))
    entry = data.draw(st.sampled_from(["nope", (name, name), (name, "nope")]))
    mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
    for kwargs, named in [
        (dict(paths=[("kernel$", (None, entry))]), "paths rule 'kernel$'"),
        (dict(paths=[("kernel$", (name, entry if entry != "nope" else name))]),
         "paths rule 'kernel$'"),
        (dict(axes={"mlp": entry}), "axes entry 'mlp'"),
    ]:  # fmt: skip
        with pytest.raises(errors.ShardingError) as e:
            js.ShardingRules(mesh, **kwargs)
        assert named in str(e.value) and str(sizes) in str(e.value)


@settings(max_examples=examples(1), deadline=None)
@given(rule_sets(), st.lists(variables(), max_size=6))
def test_unused_lists_the_rules_that_decide_no_spec(rules_args, vars_):
    sizes, paths, table = rules_args
    rules = make_rules(sizes, paths, table)
    tree = js.unflatten(
        {
            f"params/{p}": None
            for p, _, _ in vars_
            if not any(q.startswith(p + "/") for q, _, _ in vars_)
        }
    )
    flat = [k.split("/", 1)[1] for k in js.flatten(tree)]
    deciding = set()
    for path in flat:
        for i, (regex, _) in enumerate(paths):
            if re.search(regex, path):
                deciding.add(i)
                break
    expected = [regex for i, (regex, _) in enumerate(paths) if i not in deciding]
    assert rules.unused(tree) == expected


# ---------------------------------------------------------------- worked cases

MESH = AbstractMesh((2, 4), ("data", "model"))
MESH_TEXT = "{'data': 2, 'model': 4}"


def rules(**kwargs):
    return js.ShardingRules(MESH, **kwargs)


def test_precedence_path_then_axes_then_replicated():
    r = rules(
        paths=[(r"attn/.*kernel$", (None, "model")), (r"kernel$", ("model", None))],
        axes={"embed": "data", "mlp": "model"},
    )
    assert r.spec("b/attn/q/kernel", (8, 8), ("embed", "mlp")) == P(None, "model")
    assert r.spec("b/mlp/kernel", (8, 8), ("embed", "mlp")) == P("model")
    assert r.spec("b/mlp/bias", (8,), ("mlp",)) == P("model")
    assert r.spec("b/mlp/bias", (8,)) == P()


def test_search_not_fullmatch():
    r = rules(paths=[("attn", ("model",))])
    assert r.spec("model/h0/attn/c_attn/b", (8,)) == P("model")
    r = rules(paths=[("^attn$", ("model",))])
    assert r.spec("model/h0/attn/c_attn/b", (8,)) == P()


def test_a_tuple_of_mesh_axes_shards_over_their_product():
    r = rules(axes={"vocab": ("data", "model")})
    assert r.spec("emb", (16, 3), ("vocab", None)) == P(("data", "model"))
    with pytest.raises(errors.ShardingError, match=r"not divisible by 8"):
        r.spec("emb", (12, 3), ("vocab", None))


def test_empty_spec_replicates_any_rank():
    r = rules(paths=[("", ())])
    assert r.spec("a/b", (3, 5, 7)) == P()


def test_without_an_axes_table_logical_names_are_not_used():
    assert rules().spec("w", (3, 5), ("anything", "goes")) == P()


@pytest.mark.parametrize(
    "kwargs, path, shape, axes, words",
    [
        (dict(paths=[("w$", (None, "model"))]), "n/w", (8,), None,
         ["n/w", "(8,)", "P(None, 'model')", "'w$'", "rank 1", MESH_TEXT]),
        (dict(paths=[("w$", (None, "model"))]), "n/w", (8, 6), None,
         ["n/w", "(8, 6)", "dimension 1 (size 6)", "divisible by 4", MESH_TEXT]),
        (dict(axes={"mlp": "model"}), "n/w", (8, 6), ("embed", "mlp"),
         ["n/w", "'embed'", "not in the rules' axes table", "None to replicate",
          MESH_TEXT]),
        (dict(axes={"mlp": "model", "heads": "model"}), "n/w", (8, 8),
         ("heads", "mlp"), ["n/w", "'model' twice", MESH_TEXT]),
    ],
)  # fmt: skip
def test_errors_name_path_shape_spec_and_mesh(kwargs, path, shape, axes, words):
    with pytest.raises(errors.ShardingError) as e:
        rules(**kwargs).spec(path, shape, axes)
    for word in words:
        assert word in str(e.value)
    assert e.value.path == path
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value) and again.path == path


def test_a_regex_that_does_not_compile_is_named():
    with pytest.raises(errors.ShardingError, match=r"regex of paths rule '\(attn'"):
        rules(paths=[("(attn", ())])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(paths="kernel$"),
        dict(paths=[("kernel$",)]),
        dict(paths=[(3, ())]),
        dict(paths=[("kernel$", "model")]),
        dict(paths=[("kernel$", (None, 1))]),
        dict(axes=[("mlp", "model")]),
        dict(axes={1: "model"}),
    ],
)
def test_wrong_types_are_argument_type_errors(kwargs):
    with pytest.raises(errors.ArgumentTypeError):
        rules(**kwargs)


def test_a_mesh_is_required():
    with pytest.raises(errors.ArgumentTypeError, match="jax.make_mesh"):
        js.ShardingRules({"data": 2})


def test_a_real_one_device_mesh_works_the_same():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    r = js.ShardingRules(mesh, paths=[("k$", (None, "model"))], axes={"m": "data"})
    assert r.mesh is mesh
    assert r.spec("a/k", (3, 5)) == P(None, "model")
    assert r.spec("a/b", (3,), ("m",)) == P("data")
    assert r.mesh_shape == {"data": 1, "model": 1}


def test_repr_shows_the_mesh_and_rules():
    r = rules(paths=[("k$", (None, "model"))], axes={"m": None})
    assert repr(r) == (
        f"ShardingRules(mesh={MESH_TEXT}, paths=[('k$', P(None, 'model'))], "
        "axes={'m': None})"
    )
