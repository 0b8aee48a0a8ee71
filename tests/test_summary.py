"""Tests of js.summary: the table of a function's variables."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js


def model(x):
    with js.variable_scope("encoder"):
        with js.variable_scope("dense"):
            w = js.get_variable("kernel", (x.shape[-1], 8))
            b = js.get_variable("bias", (8,), initializer=js.initializers.zeros())
        h = x @ w + b
    with js.variable_scope("head"):
        v = js.get_variable("kernel", (8, 3), dtype=jnp.bfloat16)
    step = js.get_variable("step", (), jnp.int32)
    return (h @ v.astype(jnp.float32)) * step


X = jnp.ones((2, 5))


def test_rows_follow_creation_order_and_match_init():
    s = js.summary(model, jax.random.key(0), X)
    assert [(r.collection, r.path) for r in s.rows] == [
        ("params", "encoder/dense/kernel"),
        ("params", "encoder/dense/bias"),
        ("params", "head/kernel"),
        ("state", "step"),
    ]
    variables = js.init(model, jax.random.key(0), X)
    for r in s.rows:
        value = js.flatten(variables)[f"{r.collection}/{r.path}"]
        assert r.shape == value.shape
        assert r.dtype == value.dtype.name
        assert r.count == value.size
        assert r.bytes == value.nbytes


def test_totals_and_subtotals():
    s = js.summary(model, jax.random.key(0), X)
    assert s.total_count == 5 * 8 + 8 + 8 * 3 + 1
    assert s.total_bytes == (5 * 8 + 8) * 4 + 8 * 3 * 2 + 4
    assert s.subtotals() == {
        "encoder": (48, 192),
        "head": (24, 48),
        "(root)": (1, 4),
    }
    deep = js.summary(model, jax.random.key(0), X, depth=2)
    assert deep.subtotals()["encoder/dense"] == (48, 192)


def test_text_and_markdown_show_every_row_and_the_total():
    s = js.summary(model, jax.random.key(0), X)
    text = str(s)
    for r in s.rows:
        assert r.path in text
    assert text.splitlines()[-1].split()[:2] == ["total", f"{s.total_count:,}"]
    md = s.to_markdown().splitlines()
    assert md[0] == "| path | shape | dtype | collection | params | bytes |"
    assert len(md) == 2 + len(s.rows) + len(s.subtotals()) + 1
    assert "| head/kernel | (8, 3) | bfloat16 | params | 24 | 48 B |" in md


def test_rich_rendering_lists_every_row():
    from rich.console import Console

    s = js.summary(model, jax.random.key(0), X)
    out = io.StringIO()
    Console(file=out, width=200).print(s)
    for r in s.rows:
        assert r.path in out.getvalue()


def test_shape_only_no_device_arrays_and_shape_dtype_struct_inputs():
    def huge(x):
        return x @ js.get_variable("w", (x.shape[-1], 4096 * 4))

    x = jax.ShapeDtypeStruct((1, 4096), jnp.float32)
    before = {id(a) for a in jax.live_arrays()}
    s = js.summary(huge, jax.random.key(0), x)
    new = [a for a in jax.live_arrays() if id(a) not in before]
    assert sum(a.nbytes for a in new) < 1024  # no 256 MiB kernel was made
    assert s.rows[0].shape == (4096, 4096 * 4)


def test_static_arguments_stay_static():
    def f(x, units, *, activation):
        w = js.get_variable("w", (x.shape[-1], units))
        return activation(x @ w)

    s = js.summary(f, jax.random.key(0), X, 7, activation=jax.nn.relu)
    assert s.rows[0].shape == (5, 7)


def test_errors_surface_with_their_path():
    def bad(x):
        js.get_variable("w", (1,))
        js.get_variable("w", (1,))

    with pytest.raises(js.errors.VariableExistsError, match="w already exists"):
        js.summary(bad, jax.random.key(0), X)


def test_thousand_variables():
    def big(x):
        for i in range(500):
            with js.variable_scope(f"l{i}"):
                x = x @ js.get_variable("w", (2, 2)) + js.get_variable("b", (2,))
        return x

    s = js.summary(big, jax.random.key(0), jnp.ones((1, 2)))
    assert len(s.rows) == 1000
    assert s.total_count == 500 * 6
    assert np.all([r.collection == "params" for r in s.rows])
