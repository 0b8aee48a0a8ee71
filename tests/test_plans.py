"""Apply plans (design §2.8): a replayed apply behaves exactly as an ordinary one.

An eager `js.apply` records the scope and read events of a function and later
applies replay them (`jscope._src.plans`). Every test compares applies with
plans against the same applies with plans switched off: values, scope names
and fields, errors and their messages. The property test draws the random scope
programs of `test_properties` (scopes by name, default name and object, reads,
`js.Variable`, `reuse_variables`), so plans end at every kind of event.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import examples
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from test_properties import KEY, Runner, programs, to_source

import jscope as js
from jscope._src import context, plans


@pytest.fixture(autouse=True)
def _fresh_plans():
    plans._PLANS.clear()
    yield
    plans._PLANS.clear()


def _plain(fn, variables, *args, **kwargs):
    """`js.apply` with plans switched off: the reference."""
    begin, replaying = plans.begin, plans.replaying
    plans.begin = lambda frame, fn, variables: None
    plans.replaying = lambda fn, variables, rngs: None
    try:
        return js.apply(fn, variables, *args, **kwargs)
    finally:
        plans.begin, plans.replaying = begin, replaying


def _outcome(call):
    try:
        return "ok", call()
    except Exception as e:  # noqa: BLE001 - the error itself is compared
        return type(e), str(e)


def _seen(runner: Runner):
    """What a program saw: values, and each captured scope's fields."""
    values = [(step, name, np.asarray(v)) for step, name, v in runner.seen]
    scopes = [
        (s.name, s.reuse, s.original_name_scope, s.initializer, s.dtype)
        for s in runner.captured
    ]
    return values, scopes


def _same(a, b):
    (va, sa), (vb, sb) = a, b
    assert sa == sb
    assert len(va) == len(vb)
    for (step_a, name_a, x), (step_b, name_b, y) in zip(va, vb, strict=True):
        assert (step_a, name_a) == (step_b, name_b)
        np.testing.assert_array_equal(x, y)


def _play(runner, variables, plain: bool):
    call = _plain if plain else js.apply
    kind, detail = _outcome(lambda: call(runner, variables))
    if kind != "ok":
        return kind, detail
    return "ok", _seen(runner)


def _check(runner, variables, reference):
    got = _play(runner, variables, plain=False)
    assert got[0] == reference[0], (got, reference)
    if got[0] == "ok":
        _same(got[1], reference[1])
    else:
        assert got[1] == reference[1]


@settings(
    max_examples=examples(5),
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(programs, st.integers(0, 3))
def test_replayed_applies_match_plain_applies(program, changed):
    note(to_source(program))
    try:
        variables = js.init(Runner(program), KEY)
    except js.errors.JscopeError:
        assume(False)
    runner = Runner(program)
    reference = _play(Runner(program), variables, plain=True)
    for _ in range(3):  # records, then replays
        _check(runner, variables, reference)
    # A tree that differs in one leaf: the replay meets it where it reads it.
    flat = js.flatten(variables)
    assume(flat)
    path = sorted(flat)[changed % len(flat)]
    for leaf in (flat[path][..., :1] if flat[path].ndim else flat[path] + 1,):
        other = js.unflatten({**flat, path: leaf})
        _check(runner, other, _play(Runner(program), other, plain=True))
    _check(runner, variables, reference)


# -------------------------------------------------------------- targeted cases


def _mlp(x, n=3):
    for i in range(n):
        with js.variable_scope(f"layer{i}"):
            w = js.get_variable("w", (x.shape[-1], 4))
            b = js.get_variable("b", (4,), initializer=js.initializers.zeros())
        x = jnp.tanh(x @ w + b)
    return x


X = jnp.ones((2, 4))


def _entry(fn):
    return plans._PLANS.get(id(getattr(fn, "__code__", fn)))


def test_a_plan_is_recorded_then_replayed():
    v = js.init(_mlp, KEY, X)
    first = js.apply(_mlp, v, X)
    entry = _entry(_mlp)
    assert entry is not None and len(entry[1]) == 3 * 4  # enter, 2 reads, exit
    plan = entry[1]
    second = js.apply(_mlp, v, X)
    assert _entry(_mlp)[1] is plan  # replayed to the end: kept
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, _plain(_mlp, v, X))


def test_a_kept_plan_links_each_event_to_the_next():
    # The inline replay moves on by the event's own last item, and a plan that
    # ends counts the events replayed from the index of the one it stopped at.
    v = js.init(_mlp, KEY, X)
    js.apply(_mlp, v, X)
    plan = _entry(_mlp)[1]
    kinds = [event[0] for event in plan]
    assert kinds == [plans.ENTER, plans.READ, plans.READ, plans.EXIT] * 3
    for index, event in enumerate(plan):
        assert event[-2] == index
        if index + 1 < len(plan):
            assert event[-1] is plan[index + 1]
    assert plan[-1][-1] == (plans.END, len(plan), None)


def test_inline_lambdas_and_methods_share_a_plan():
    v = js.init(_mlp, KEY, X)

    class Model:
        def forward(self, x):
            return _mlp(x)

    m = Model()
    for _ in range(3):
        js.apply(m.forward, v, X)
        js.apply(lambda x: _mlp(x), v, X)
    assert _entry(m.forward)[1] is not None
    assert _entry(m.forward)[2] == 0


def test_no_plan_under_jit_or_at_init():
    v = js.init(_mlp, KEY, X)
    jax.jit(lambda v, x: js.apply(_mlp, v, x))(v, X)
    assert _entry(_mlp) is None


def test_a_changed_shape_raises_as_without_plans():
    v = js.init(_mlp, KEY, X)
    js.apply(_mlp, v, X)
    flat = js.flatten(v)
    flat["params/layer1/w"] = flat["params/layer1/w"][:, :2]
    bad = js.unflatten(flat)
    with pytest.raises(js.errors.ShapeMismatchError) as got:
        js.apply(_mlp, bad, X)
    with pytest.raises(js.errors.ShapeMismatchError) as want:
        _plain(_mlp, bad, X)
    assert str(got.value) == str(want.value)
    assert _entry(_mlp)[1] is None and _entry(_mlp)[2] == 1  # dropped once
    np.testing.assert_array_equal(js.apply(_mlp, v, X), _plain(_mlp, v, X))


def test_a_function_that_keeps_changing_is_no_longer_planned():
    def model(x, name):
        with js.variable_scope(name):
            return x @ js.get_variable("w", (4, 4))

    v = js.init(lambda x: model(x, "a") + model(x, "b"), KEY, X)
    name = ["a"]

    def varying(x):
        return model(x, name[0])

    for i in range(2 * plans.STRIKES + 2):
        name[0] = "ab"[i % 2]
        np.testing.assert_array_equal(js.apply(varying, v, X), _plain(varying, v, X))
    assert _entry(varying)[2] == plans.STRIKES
    assert _entry(varying)[1] is None


def test_a_name_scope_recorded_but_not_replayed_changes_the_names():
    flag = [True]

    def f():
        if flag[0]:
            with js.name_scope("a"):
                pass
        with js.variable_scope("a") as s:
            js.get_variable("w", (2,))
        return s.original_name_scope

    v = js.init(f, KEY)
    assert js.apply(f, v) == _plain(f, v) == "a_1/"
    flag[0] = False
    assert js.apply(f, v) == _plain(f, v) == "a/"
    flag[0] = True
    assert js.apply(f, v) == _plain(f, v) == "a_1/"


def test_setters_and_scope_methods_end_the_plan():
    flag = [False]

    def f():
        with js.variable_scope("a") as s:
            w = js.get_variable("w", (2,))
            if flag[0]:
                s.reuse_variables()
            w2 = js.get_variable("w", (2,), initializer=None)
        return w + w2, js.get_variable_scope().name

    def g():
        with js.variable_scope("a", reuse=js.AUTO_REUSE) as s:
            js.get_variable("w", (2,))
        return s.get_variable("w", (2,))

    with pytest.raises(js.errors.VariableExistsError):
        js.init(f, KEY)
    flag[0] = True
    v = js.init(f, KEY)
    for value in (True, False, True, True):
        flag[0] = value
        assert _outcome(lambda: str(js.apply(f, v))) == _outcome(
            lambda: str(_plain(f, v))
        )
    vg = js.init(g, KEY)
    for _ in range(3):
        np.testing.assert_array_equal(js.apply(g, vg), _plain(g, vg))


def test_a_read_inside_jit_inside_the_run_is_as_without_plans():
    def f(x):
        with js.variable_scope("a"):
            w = js.get_variable("w", (4,))
        return jax.jit(lambda y: y * js.get_variable("u", (4,)))(x) + w

    with pytest.raises(Exception) as want:
        js.init(f, KEY, jnp.ones(4))
    v = {"params": {"a": {"w": jnp.ones(4)}, "u": jnp.ones(4)}}
    for _ in range(3):
        assert _outcome(lambda: str(js.apply(f, v, jnp.ones(4)))) == _outcome(
            lambda: str(_plain(f, v, jnp.ones(4)))
        )
    del want


def test_an_error_caught_inside_the_run_leaves_the_same_state():
    def f():
        with js.variable_scope("a"):
            js.get_variable("w", (2,))
            with contextlib.suppress(js.errors.VariableExistsError):
                js.get_variable("w", (2,))  # exists: reuse is off
            with contextlib.suppress(KeyError), js.variable_scope("b"):
                raise KeyError("inside")
            with js.variable_scope("b") as s:
                pass
        with js.variable_scope("a", reuse=True):
            w = js.get_variable("w", (2,))
        return s.original_name_scope, w

    v = {"params": {"a": {"w": jnp.ones(2)}}}
    for _ in range(3):
        got, want = js.apply(f, v), _plain(f, v)
        assert got[0] == want[0] == "a/b_1/"
        np.testing.assert_array_equal(got[1], want[1])


def test_assign_and_assigned_state_come_back_as_without_plans():
    def f(x):
        with js.variable_scope("bn"):
            mean = js.get_variable("mean", (4,), collection="batch_stats")
            js.assign(mean, mean * 0.9 + x.mean(0) * 0.1)
        return _mlp(x)

    v = js.init(f, KEY, X)
    for _ in range(3):
        out, new = js.apply(f, v, X, mutable=["batch_stats"])
        out2, new2 = _plain(f, v, X, mutable=["batch_stats"])
        np.testing.assert_array_equal(out, out2)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new2), strict=True):
            np.testing.assert_array_equal(a, b)


def test_scope_objects_are_new_in_every_run():
    def f():
        with js.variable_scope("a") as s:
            js.get_variable("w", (2,))
        return s

    v = js.init(f, KEY)
    s1, s2, s3 = js.apply(f, v), js.apply(f, v), js.apply(f, v)
    assert s1 is not s2 and s2 is not s3
    s2.set_initializer(js.initializers.ones())  # after its run: no effect on others
    s4 = js.apply(f, v)
    assert s4.initializer is None and s4.name == "a" and s4.original_name_scope == "a/"


def test_a_shape_list_changed_between_applies_is_read_as_it_is_now():
    shape = [2, 3]

    def f():
        with js.variable_scope("a"):
            return js.get_variable("w", shape)

    v = js.init(f, KEY)
    js.apply(f, v)
    js.apply(f, v)
    shape[1] = 4  # the plan must not see its own list change
    for call in (js.apply, _plain, js.apply):
        with pytest.raises(js.errors.ShapeMismatchError, match=r"\[2, 4\]|\(2, 4\)"):
            call(f, v)
    shape[1] = 3
    np.testing.assert_array_equal(js.apply(f, v), _plain(f, v))


def test_a_tree_of_other_shapes_under_the_same_keys_replays_and_ends_as_it_is():
    # A plan keeps no shape: each read compares the shape it is given with its
    # array's, and a plan that ends after its reads rebuilds the run's state
    # with the shapes the reads were given, not those of the recording.
    def f(x):
        h = _mlp(x)
        with js.variable_scope("layer0", reuse=True):
            w = js.get_variable("w")  # no shape: not a plan's read, so it ends
        return h, w

    narrow, wide = jnp.ones((2, 4)), jnp.ones((2, 6))
    v4, v6 = js.init(f, KEY, narrow), js.init(f, KEY, wide)
    for v, x in ((v4, narrow), (v4, narrow), (v6, wide), (v6, wide), (v4, narrow)):
        got, want = js.apply(f, v, x), _plain(f, v, x)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        assert got[1].shape == (x.shape[-1], 4)
    entry = _entry(f)
    assert entry[1] is not None and entry[2] == 0  # replayed, never dropped
    assert entry[1][-1][0] is plans.ENTER  # it stops at the read without shape


def test_callable_objects_and_partials_are_planned_by_identity():
    import functools

    v = js.init(_mlp, KEY, X)
    part = functools.partial(_mlp, n=3)
    for _ in range(3):
        np.testing.assert_array_equal(js.apply(part, v, X), _plain(_mlp, v, X))
    assert _entry(part)[1] is not None and _entry(part)[2] == 0


def test_a_reuse_flag_that_changes_between_applies_is_compared():
    reuse = [True]

    def f():
        with js.variable_scope("a"):
            w = js.get_variable("w", (2,))
        with js.variable_scope("a", reuse=reuse[0]):
            return w + js.get_variable("w", (2,))

    v = js.init(f, KEY)
    for flag in (True, True, None, False, js.AUTO_REUSE, True):
        reuse[0] = flag
        assert _outcome(lambda: str(js.apply(f, v))) == _outcome(
            lambda: str(_plain(f, v))
        )


def test_a_name_scope_reentered_by_its_full_name_ends_the_plan():
    outer = [False]

    def f():
        cm = js.name_scope("outer/") if outer[0] else contextlib.nullcontext()
        with cm, js.variable_scope("v") as s:
            js.get_variable("w", (2,))
        return s.original_name_scope

    v = js.init(f, KEY)
    for flag in (False, False, True, False, True):
        outer[0] = flag
        assert js.apply(f, v) == _plain(f, v) == ("outer/v/" if flag else "v/")


def test_a_read_that_moves_inside_jit_is_refused_as_without_plans():
    inside = [False]

    def f(x):
        def read(y):
            return y * js.get_variable("u", (4,))

        return jax.jit(read)(x) if inside[0] else read(x)

    v = {"params": {"u": jnp.ones(4)}}
    for flag in (False, False, True, False):
        inside[0] = flag
        got = _outcome(lambda: str(js.apply(f, v, jnp.ones(4))))
        want = _outcome(lambda: str(_plain(f, v, jnp.ones(4))))
        assert got == want
        assert (got[0] == "ok") is not flag


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.reuse_variables(),  # then "a/w" does not exist yet: an error
        lambda s: s.set_dtype(jnp.bfloat16),  # then "a/w" is float32: an error
        lambda s: s.set_initializer(js.initializers.ones()),  # no difference
    ],
)
def test_a_setter_called_in_a_replayed_run_ends_its_plan(change):
    changed = [False]

    def f():
        with js.variable_scope("a") as s:
            if changed[0]:
                change(s)
            return js.get_variable("w", (2,))

    v = js.init(f, KEY)
    for flag in (False, False, True, False, True):
        changed[0] = flag
        assert _outcome(lambda: str(js.apply(f, v))) == _outcome(
            lambda: str(_plain(f, v))
        )


# ------------------------------------------- the given tree, read as it is


class _Key:
    """A dict key that is not a str but flattens to the name ``w``."""

    def __format__(self, spec):
        return "w"


def _with(v, *path_and_value):
    """A copy of ``v`` with ``node[key] = value`` at each (path, key, value)."""
    out = jax.tree.map(lambda a: a, v)
    out = {c: _copy(sub) for c, sub in out.items()}
    for path, key, value in path_and_value:
        node = out
        for part in path:
            node = node[part]
        node[key] = value
    return out


def _copy(node):
    return {k: _copy(x) if isinstance(x, dict) else x for k, x in node.items()}


def _trees_a_walk_cannot_trust(v):
    w = v["params"]["layer1"]["w"]
    other = w + 1
    params = v["params"]
    yield "a '/' key after its nested twin", _with(v, (("params",), "layer1/w", other))
    yield "a '/' key before its nested twin", {"params": {"layer1/w": other, **params}}
    yield "a key that is not a str", _with(v, (("params", "layer1"), _Key(), other))
    yield "a key more in a scope", _with(v, (("params", "layer1"), "extra", other))
    yield "a collection more", {**v, "state": {"n": jnp.zeros(2)}}
    yield "a collection that is not a dict", {**v, "state": [jnp.zeros(2)]}
    yield "a tree that is not a dict", _Mapping(v)
    yield (
        "a scope that is not a dict",
        {"params": {**params, "layer1": _Mapping(params["layer1"])}},
    )
    yield "a leaf that became a scope", _with(v, (("params", "layer1"), "w", {"x": w}))
    yield (
        "a missing scope",
        {"params": {k: x for k, x in params.items() if k != "layer2"}},
    )


class _Mapping(dict):
    """A dict subclass: a Mapping the flattened read accepts and a walk does not."""


@pytest.mark.parametrize("case", range(10))
def test_a_tree_a_replay_cannot_read_as_it_is_gives_what_the_flat_tree_gives(case):
    v = js.init(_mlp, KEY, X)
    label, tree = list(_trees_a_walk_cannot_trust(v))[case]
    for _ in range(2):  # a recorded plan meets the tree, then records on it
        got = _outcome(lambda: np.asarray(js.apply(_mlp, tree, X)))
        want = _outcome(lambda: np.asarray(_plain(_mlp, tree, X)))
        assert got[0] == want[0], (label, got, want)
        if got[0] == "ok":
            np.testing.assert_array_equal(got[1], want[1])
        else:
            assert got[1] == want[1]
        np.testing.assert_array_equal(js.apply(_mlp, v, X), _plain(_mlp, v, X))


def test_a_flat_tree_is_not_planned_and_reads_as_without_plans():
    v = js.init(_mlp, KEY, X)
    flat = {"params": js.flatten(v["params"])}  # keys such as "layer0/w"
    for _ in range(4):
        np.testing.assert_array_equal(js.apply(_mlp, flat, X), _plain(_mlp, v, X))
    plan = _entry(_mlp)[1]  # it stops at the first read, which a walk cannot take
    assert [event[0] for event in plan] == [plans.ENTER]


def test_a_replayed_run_makes_what_other_code_touches_when_it_does():
    def f(x):
        y = _mlp(x)
        key = js.next_rng_key("dropout")  # touches the run's key counts
        return y + jax.random.uniform(key, y.shape)

    v = js.init(f, KEY, X)
    rngs = {"dropout": jax.random.key(3)}
    for _ in range(3):
        np.testing.assert_array_equal(
            js.apply(f, v, X, rngs=rngs), _plain(f, v, X, rngs=rngs)
        )
    assert _entry(f)[1] is not None and _entry(f)[2] == 0
    with pytest.raises(js.errors.RngTypeError) as got:
        js.apply(f, v, X, rngs=3)
    with pytest.raises(js.errors.RngTypeError) as want:
        _plain(f, v, X, rngs=3)
    assert str(got.value) == str(want.value)


def test_a_replayed_run_drops_at_its_end_what_it_made():
    # A replay's frame sets its containers only when touched; its end drops
    # what a touched one holds, as an ordinary run's end does.
    frames = []

    def f(x, touch):
        frame = context.peek()
        frames.append(frame)
        if touch:
            frame.created["kept"] = x  # a container made when touched
        return _mlp(x)

    v = js.init(f, KEY, X, False)
    for touch in (False, False, False, True, False):
        got = js.apply(f, v, X, touch)
        frame = frames[-1]
        np.testing.assert_array_equal(got, _plain(f, v, X, touch))
        assert not frame.alive and frame.plan_mode is None and frame.rngs is None
        assert frame.created == {}
    assert type(frame) is context.PlannedFrame  # replayed, to its end
    assert _entry(f)[2] == 0


def test_trees_of_two_shapes_in_turn_stop_being_planned():
    v = js.init(_mlp, KEY, X)
    more = _with(v, (("params",), "unused", {"w": jnp.zeros(2)}))
    for i in range(2 * plans.STRIKES + 2):
        tree = (v, more)[i % 2]
        np.testing.assert_array_equal(js.apply(_mlp, tree, X), _plain(_mlp, tree, X))
    entry = _entry(_mlp)
    assert entry[1] is None and entry[2] == plans.STRIKES  # no recording each call
