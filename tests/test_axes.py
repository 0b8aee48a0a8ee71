"""Logical axes of variables (DESIGN §8.2): ``axes=`` on get_variable and Variable.

Where the axes lead (specs, shardings) is tested in ``test_sharding_rules.py`` and
``tests/multidevice/``; here: what is accepted, refused, recorded, and checked on
reuse, at init and at apply, in scopes and lifted transforms.
"""

import pickle

import jax
import jax.numpy as jnp
import pytest

import jscope as js
from jscope import errors
from jscope._src import context

KEY = jax.random.key(0)


def recorded_axes(fn, *args):
    """The ``{path: axes}`` a run of ``fn`` records, at init and at apply."""

    def probe(*args):
        fn(*args)
        return dict(context.peek().axes_of)

    at_init, variables = js.init_with_output(probe, KEY, *args)
    at_apply = js.apply(probe, variables, *args)
    assert at_init == at_apply
    return at_init


def test_get_variable_and_variable_record_their_axes():
    def fn():
        with js.variable_scope("block"):
            js.get_variable("w", (4, 8), axes=("embed", "mlp"))
            js.get_variable("b", (8,), axes=["mlp"])  # a list is accepted
            js.get_variable("plain", (3,))
        with js.name_scope("v"):
            js.Variable(jnp.zeros((2, 3)), name="h", axes=(None, "heads"))

    assert recorded_axes(fn) == {
        "block/w": ("embed", "mlp"),
        "block/b": ("mlp",),
        "v/h": (None, "heads"),
    }


def test_axes_of_a_scalar_is_the_empty_tuple():
    assert recorded_axes(lambda: js.get_variable("s", (), axes=())) == {"s": ()}


@pytest.mark.parametrize("bad", ["embed", 3, ("embed", 1), (None, b"mlp")])
def test_axes_that_are_not_names_are_a_type_error(bad):
    def fn():
        with js.variable_scope("n"):
            js.get_variable("w", (2, 2), axes=bad)

    with pytest.raises(errors.ArgumentTypeError, match="axes= of variable n/w") as e:
        js.init(fn, KEY)
    assert isinstance(e.value, TypeError)
    assert e.value.path == "n/w"
    assert "axes=('embed', 'mlp')" in str(e.value)


@pytest.mark.parametrize("make", ["get_variable", "Variable"])
def test_axes_of_the_wrong_length_name_path_and_shape(make):
    def fn():
        with js.variable_scope("n"):  # also the name scope n
            if make == "get_variable":
                js.get_variable("w", (2, 3), axes=("embed",))
            else:
                js.Variable(jnp.zeros((2, 3)), name="w", axes=("embed",))

    with pytest.raises(errors.ShardingError) as e:
        js.init(fn, KEY)
    assert isinstance(e.value, ValueError)
    assert e.value.path == "n/w"
    msg = str(e.value)
    assert "n/w" in msg and "(2, 3)" in msg and "('embed',)" in msg
    assert "one logical name" in msg


def test_wrong_length_is_refused_at_apply_too():
    good = js.init(lambda: js.get_variable("w", (2, 3)), KEY)
    with pytest.raises(errors.ShardingError, match="has 2"):
        js.apply(lambda: js.get_variable("w", (2, 3), axes=("a",)), good)


def reuse(first, second, shape=(2, 3)):
    def fn():
        with js.variable_scope("s"):
            js.get_variable("w", shape, axes=first)
        with js.variable_scope("s", reuse=True):
            js.get_variable("w", shape, axes=second)
        return dict(context.peek().axes_of)

    return fn


@pytest.mark.parametrize(
    "first, second, kept",
    [
        (("a", "b"), ("a", "b"), ("a", "b")),
        (("a", "b"), None, ("a", "b")),
        (("a", "b"), (None, "b"), ("a", "b")),
        (("a", None), ("a", "c"), ("a", None)),  # the creation's axes stay
        (None, ("a", "b"), None),
    ],
)
def test_reuse_with_agreeing_axes(first, second, kept):
    out, variables = js.init_with_output(reuse(first, second), KEY)
    assert out.get("s/w") == kept
    assert js.apply(reuse(first, second), variables) == out


def test_reuse_with_other_axes_is_an_error_at_init_and_apply():
    variables = js.init(reuse(("a", "b"), None), KEY)
    for run in (
        lambda: js.init(reuse(("a", "b"), ("a", "c")), KEY),
        lambda: js.apply(reuse(("a", "b"), ("a", "c")), variables),
    ):
        with pytest.raises(errors.ShardingError) as e:
            run()
        msg = str(e.value)
        assert e.value.path == "s/w"
        assert "Trying to share variable s/w" in msg
        assert "axes=('a', 'c')" in msg and "axes=('a', 'b')" in msg
        assert "dimension 1" in msg


def test_reuse_with_axes_of_the_wrong_length_is_an_error():
    with pytest.raises(errors.ShardingError, match="names 1 dimension"):
        js.init(reuse(("a", "b"), ("a",)), KEY)


def test_a_custom_getter_sees_axes_only_when_given():
    seen = []

    def getter(next_getter, name, *args, **kwargs):
        seen.append((name, kwargs.get("axes", "absent")))
        return next_getter(name, *args, **kwargs)

    def fn():
        with js.variable_scope("g", custom_getter=getter):
            js.get_variable("w", (2,), axes=("x",))
            js.get_variable("v", (2,))
        return dict(context.peek().axes_of)

    out = js.init_with_output(fn, KEY)[0]
    assert seen == [("g/w", ("x",)), ("g/v", "absent")]
    assert out == {"g/w": ("x",)}


def test_a_getter_without_kwargs_still_works_without_axes():
    def getter(next_getter, name, shape=None, dtype=None, initializer=None,
               regularizer=None, reuse=None, trainable=None,
               collection=None):  # fmt: skip
        return next_getter(name, shape, dtype, initializer, regularizer, reuse)

    def fn():
        with js.variable_scope("g", custom_getter=getter):
            return js.get_variable("w", (2,))

    assert js.init_with_output(fn, KEY)[0].shape == (2,)


def scan_program(axis_name, axis=0):
    def block(x, _):
        w = js.get_variable("w", (3, 3), axes=("embed", "mlp"))
        js.get_variable("plain", (3,))
        js.get_variable("shared", (3,), axes=("embed",), collection="consts")
        return x @ w, None

    def fn(x):
        js.scan(block, variable_axes={"params": axis}, length=2, axis_name=axis_name)(
            x, None
        )
        return dict(context.peek().axes_of)

    return fn


def test_scan_names_the_stacked_dimension():
    out = recorded_axes(scan_program("layers"), jnp.ones((3,)))
    assert out == {
        "w": ("layers", "embed", "mlp"),
        "plain": ("layers", None),  # named by the stack only
        "shared": ("embed",),  # not stacked
    }


def test_an_unnamed_stack_keeps_the_body_axes_and_a_none():
    out = recorded_axes(scan_program(None), jnp.ones((3,)))
    assert out == {"w": (None, "embed", "mlp"), "shared": ("embed",)}


def test_the_stacked_dimension_sits_at_the_variable_axis():
    out = recorded_axes(scan_program("layers", axis=1), jnp.ones((3,)))
    assert out["w"] == ("embed", "layers", "mlp")


def test_nested_transforms_name_each_dimension():
    def member(x):
        scan_program("layers")(x)
        return x

    def fn(x):
        js.vmap(member, {"params": 0}, in_axes=None, axis_size=2,
                axis_name="members")(x)  # fmt: skip
        return dict(context.peek().axes_of)

    out = recorded_axes(fn, jnp.ones((3,)))
    assert out["w"] == ("members", "layers", "embed", "mlp")
    assert out["shared"] == ("embed",)


def test_vmap_axis_name_serves_collectives_at_init_and_apply():
    def member(x):
        y = x @ js.get_variable("w", (2, 1))
        js.get_variable("s", (1,), collection="consts")
        return y - jax.lax.pmean(y, "members")

    def ensemble(x):
        return js.vmap(member, {"params": 0}, in_axes=None, axis_size=3,
                       axis_name="members")(x)  # fmt: skip

    x = jnp.ones((4, 2))
    out, variables = js.init_with_output(ensemble, KEY, x)
    assert variables["params"]["w"].shape == (3, 2, 1)
    assert variables["consts"]["s"].shape == (1,)
    for y in (out, js.apply(ensemble, variables, x)):
        assert y.shape == (3, 4, 1)
        assert float(jnp.abs(y.mean(0)).max()) < 1e-6


@pytest.mark.parametrize("make", [js.scan, js.vmap])
def test_axis_name_must_be_a_str(make):
    with pytest.raises(errors.LiftError, match="axis_name must be a str"):
        make(lambda *a: a, variable_axes={"params": 0}, axis_name=0)


def test_sharding_error_pickles():
    e = errors.ShardingError("Variable a/w: no", "a/w")
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is errors.ShardingError
    assert str(again) == "Variable a/w: no" and again.path == "a/w"
    assert isinstance(again, ValueError) and isinstance(again, errors.JscopeError)
