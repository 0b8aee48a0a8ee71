"""LSTM and GRU cells against TF1's equations (and Haiku), and rnn via js.scan."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_checks import Tolerance, check_every_argument
from layer_checks import init_fast as _init

import jscope as js
from jscope import layers

F32 = jnp.float32
BF16 = jnp.bfloat16
RANDN = js.initializers.random_normal(stddev=0.5)


def _x(shape, seed=0, dtype=F32):
    return jax.random.normal(jax.random.key(seed), shape, F32).astype(dtype)


def _check_against(ours, theirs, args, dtype=F32):
    check_every_argument(ours, theirs, args, _tol(dtype), same="shape")


_tol = Tolerance(bf16=(4e-2, 4e-2), other=(2e-5, 2e-5), same="shape")
_close = _tol.close
_tree_close = _tol.tree_close


# ------------------------------------------------------------- TF1 references


def _lstm_ref(x, state, kernel, bias, forget_bias=1.0, act=jnp.tanh):
    """TF1's LSTMCell.call, written out."""
    c, h = state
    gates = jnp.concatenate([x, h], -1) @ kernel + bias
    n = kernel.shape[1] // 4
    i, j, f, o = (gates[..., k * n : (k + 1) * n] for k in range(4))
    new_c = c * jax.nn.sigmoid(f + forget_bias) + jax.nn.sigmoid(i) * act(j)
    new_h = act(new_c) * jax.nn.sigmoid(o)
    return new_h, (new_c, new_h)


def _gru_ref(x, h, p, act=jnp.tanh):
    """TF1's GRUCell.call, written out."""
    value = jax.nn.sigmoid(jnp.concatenate([x, h], -1) @ p["gates"]["kernel"]
                           + p["gates"]["bias"])  # fmt: skip
    n = h.shape[-1]
    r, u = value[..., :n], value[..., n:]
    cand = jnp.concatenate([x, r * h], -1) @ p["candidate"]["kernel"]
    c = act(cand + p["candidate"]["bias"])
    new_h = u * h + (1 - u) * c
    return new_h, new_h


# ------------------------------------------------------------------ lstm_cell


LSTM_CASES = [
    # batch shape, input size, units, forget_bias, activation, dtype
    ((3,), 4, 5, 1.0, jnp.tanh, F32),
    ((2, 3), 6, 2, 0.0, jax.nn.relu, F32),
    ((4,), 5, 3, 1.0, jnp.tanh, BF16),
]


@pytest.mark.parametrize("batch,n_in,units,forget_bias,act,dtype", LSTM_CASES)
def test_lstm_cell_matches_tf1_equations(batch, n_in, units, forget_bias, act, dtype):
    x = _x((*batch, n_in), 1, dtype)
    state = (_x((*batch, units), 2, dtype), _x((*batch, units), 3, dtype))

    def fn(x, state):
        return layers.lstm_cell(
            x, state, units, forget_bias=forget_bias, activation=act, dtype=dtype,
            bias_initializer=RANDN,
        )  # fmt: skip

    v = _init(fn, x, state)
    p = v["params"]["lstm_cell"]
    assert p["kernel"].shape == (n_in + units, 4 * units)
    assert p["bias"].shape == (4 * units,)
    assert p["kernel"].dtype == p["bias"].dtype == dtype

    def ours(p, x, state):
        return js.apply(fn, {"params": {"lstm_cell": p}}, x, state)

    def theirs(p, x, state):
        return _lstm_ref(x, state, p["kernel"], p["bias"], forget_bias, act)

    _check_against(ours, theirs, (p, x, state), dtype)


def test_lstm_cell_matches_haiku_lstm():
    x, c, h = _x((3, 4), 1), _x((3, 5), 2), _x((3, 5), 3)

    def fn(x, state):
        return layers.lstm_cell(x, state, 5, bias_initializer=RANDN)

    p = _init(fn, x, (c, h))["params"]["lstm_cell"]
    lstm = hk.without_apply_rng(
        hk.transform(lambda x, s: hk.LSTM(5, name="lstm")(x, s))
    )

    def ours(p, x, c, h):
        out, (c, h) = js.apply(fn, {"params": {"lstm_cell": p}}, x, (c, h))
        return out, c, h

    def theirs(p, x, c, h):
        hp = {"lstm/linear": {"w": p["kernel"], "b": p["bias"]}}
        out, state = lstm.apply(hp, x, hk.LSTMState(hidden=h, cell=c))
        return out, state.cell, state.hidden

    _check_against(ours, theirs, (p, x, c, h))


def test_lstm_cell_defaults_names_and_reuse():
    x = _x((2, 3))
    state = layers.lstm_zero_state(2, 4)

    def fn(x, state):
        a = layers.lstm_cell(x, state, 4)
        b = layers.lstm_cell(x, state, 4)
        with js.variable_scope("decoder"):
            c = layers.lstm_cell(x, state, 4, name="cell")
        d = layers.lstm_cell(x, state, 4, name="lstm_cell", reuse=True)
        return a, b, c, d

    v = js.init(fn, jax.random.key(0), x, state)
    assert [(k, a.shape) for k, a in js.flatten(v).items()] == [
        ("params/lstm_cell/kernel", (7, 16)),
        ("params/lstm_cell/bias", (16,)),
        ("params/lstm_cell_1/kernel", (7, 16)),
        ("params/lstm_cell_1/bias", (16,)),
        ("params/decoder/cell/kernel", (7, 16)),
        ("params/decoder/cell/bias", (16,)),
    ]
    p = v["params"]["lstm_cell"]
    np.testing.assert_array_equal(p["bias"], np.zeros(16))  # TF1: zeros
    limit = np.sqrt(6.0 / (7 + 16))  # TF1's default: Glorot uniform
    assert np.abs(p["kernel"]).max() <= limit
    assert np.abs(p["kernel"]).max() > 0.5 * limit
    a, b, c, d = js.apply(fn, v, x, state)
    jax.tree.map(np.testing.assert_array_equal, a, d)
    assert not np.allclose(a[0], b[0])
    _tree_close(a, _lstm_ref(x, state, p["kernel"], p["bias"]))


def test_lstm_zero_state_and_scope_dtype():
    c, h = layers.lstm_zero_state((2, 3), 4, dtype=BF16)
    assert c.shape == h.shape == (2, 3, 4) and c.dtype == BF16
    x = _x((2, 3, 5))

    def fn(x):
        with js.variable_scope("half", dtype=BF16):
            return layers.lstm_cell(x, (c, h), 4)

    (out, (c1, h1)), v = js.init_with_output(fn, jax.random.key(0), x)
    assert v["params"]["half"]["lstm_cell"]["kernel"].dtype == BF16
    assert out.dtype == c1.dtype == BF16  # the kernel's dtype
    p = jax.tree.map(lambda a: a.astype(F32), v["params"]["half"]["lstm_cell"])
    _tree_close(
        js.apply(fn, v, x),
        _lstm_ref(x, (c.astype(F32), h.astype(F32)), p["kernel"], p["bias"]),
        BF16,
    )


@pytest.mark.parametrize(
    "layer,state", [(layers.lstm_cell, "lstm"), (layers.gru_cell, "gru")]
)
@pytest.mark.parametrize(
    "units,err,msg",
    [(0, ValueError, "units must be positive, got 0"),
     (2.5, TypeError, "units must be an int, got 2.5"),
     (True, TypeError, "units must be an int")],
)  # fmt: skip
def test_cell_units_errors(layer, state, units, err, msg):
    def fn(x):
        s = (
            layers.lstm_zero_state(2, 3)
            if state == "lstm"
            else layers.gru_zero_state(2, 3)
        )
        with js.variable_scope("net"):
            return layer(x, s, units)

    kind = f"{state}_cell"
    with pytest.raises(err, match=f"Layer net/{kind}: {kind} {msg}"):
        js.init(fn, jax.random.key(0), _x((2, 4)))


def test_cell_state_errors():
    x = _x((2, 4))

    def bad_lstm(x):
        return layers.lstm_cell(x, (jnp.zeros((2, 3)), jnp.zeros((2, 5))), 3)

    with pytest.raises(
        ValueError, match=r"lstm_cell: lstm_cell state h must have shape \(2, 3\)"
    ):
        js.init(bad_lstm, jax.random.key(0), x)
    with pytest.raises(ValueError, match="lstm_cell state must be a pair"):
        js.init(
            lambda x: layers.lstm_cell(x, jnp.zeros((2, 3)), 3), jax.random.key(0), x
        )
    with pytest.raises(
        ValueError, match=r"gru_cell: gru_cell state h must have shape \(2, 3\)"
    ):
        js.init(
            lambda x: layers.gru_cell(x, jnp.zeros((3, 3)), 3), jax.random.key(0), x
        )
    with pytest.raises(
        ValueError, match="gru_cell: gru_cell needs inputs of rank >= 1"
    ):
        js.init(lambda: layers.gru_cell(1.0, jnp.zeros((3,)), 3), jax.random.key(0))


# ------------------------------------------------------------------- gru_cell


GRU_CASES = [
    ((3,), 4, 5, jnp.tanh, F32),
    ((2, 2), 3, 2, jax.nn.soft_sign, BF16),
]


@pytest.mark.parametrize("batch,n_in,units,act,dtype", GRU_CASES)
def test_gru_cell_matches_tf1_equations(batch, n_in, units, act, dtype):
    x = _x((*batch, n_in), 1, dtype)
    h = _x((*batch, units), 2, dtype)

    def fn(x, h):
        return layers.gru_cell(
            x, h, units, activation=act, bias_initializer=RANDN, dtype=dtype
        )

    v = _init(fn, x, h)
    p = v["params"]["gru_cell"]
    assert jax.tree.map(jnp.shape, p) == {
        "gates": {"kernel": (n_in + units, 2 * units), "bias": (2 * units,)},
        "candidate": {"kernel": (n_in + units, units), "bias": (units,)},
    }

    def ours(p, x, h):
        return js.apply(fn, {"params": {"gru_cell": p}}, x, h)

    def theirs(p, x, h):
        return _gru_ref(x, h, p, act)

    _check_against(ours, theirs, (p, x, h), dtype)


def test_gru_cell_tf1_defaults_and_names():
    x = _x((2, 3))
    h = _x((2, 4), 1)

    def fn(x, h):
        a = layers.gru_cell(x, h, 4)
        b = layers.gru_cell(x, h, 4, name="gru_cell", reuse=True)
        c = layers.gru_cell(x, h, 4)
        return a, b, c

    v = js.init(fn, jax.random.key(0), x, h)
    assert list(js.flatten(v)) == [
        "params/gru_cell/gates/kernel",
        "params/gru_cell/gates/bias",
        "params/gru_cell/candidate/kernel",
        "params/gru_cell/candidate/bias",
        "params/gru_cell_1/gates/kernel",
        "params/gru_cell_1/gates/bias",
        "params/gru_cell_1/candidate/kernel",
        "params/gru_cell_1/candidate/bias",
    ]
    p = v["params"]["gru_cell"]
    np.testing.assert_array_equal(p["gates"]["bias"], np.ones(8))  # TF1: 1.0
    np.testing.assert_array_equal(p["candidate"]["bias"], np.zeros(4))
    (a, _), (b, _), (c, _) = js.apply(fn, v, x, h)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    _close(a, _gru_ref(x, h, p)[0])


def test_gru_zero_state():
    h = layers.gru_zero_state(3, 2)
    assert h.shape == (3, 2) and h.dtype == F32
    np.testing.assert_array_equal(h, np.zeros((3, 2)))


# ------------------------------------------------------------------------ rnn


def _cell(kind, units):
    if kind == "lstm":
        return functools.partial(layers.lstm_cell, units=units, bias_initializer=RANDN)
    return functools.partial(layers.gru_cell, units=units, bias_initializer=RANDN)


def _zero(kind, batch, units):
    if kind == "lstm":
        return (_x((batch, units), 7), _x((batch, units), 8))
    return _x((batch, units), 7)


def _loop(kind, units, xs, state, time_major=False, reverse=False):
    """The same RNN as a Python loop, sharing the cell with reuse=True."""
    cell = _cell(kind, units)
    with js.variable_scope("rnn"):
        n = xs.shape[0 if time_major else 1]
        outs = [None] * n
        order = range(n - 1, -1, -1) if reverse else range(n)
        for k, t in enumerate(order):
            x = xs[t] if time_major else xs[:, t]
            outs[t], state = cell(
                x, state, name=f"{kind}_cell", reuse=True if k else None
            )
        return jnp.stack(outs, 0 if time_major else 1), state


@pytest.mark.parametrize(
    "kind,time_major,reverse",
    [("lstm", False, False), ("gru", True, False), ("lstm", False, True),
     ("gru", False, True)],
)  # fmt: skip
def test_rnn_with_scan_equals_python_loop_with_reuse(kind, time_major, reverse):
    units, batch, n = 3, 2, 5
    xs = _x((n, batch, 4) if time_major else (batch, n, 4))
    state = _zero(kind, batch, units)

    def scanned(xs, state):
        return layers.rnn(_cell(kind, units), xs, state, time_major=time_major,
                          reverse=reverse)  # fmt: skip

    def looped(xs, state):
        return _loop(kind, units, xs, state, time_major, reverse)

    v1 = _init(scanned, xs, state)
    v2 = _init(looped, xs, state)
    # The same variables: one set, at the same paths, with the same values.
    assert jax.tree.map(jnp.shape, v1) == jax.tree.map(jnp.shape, v2)
    jax.tree.map(np.testing.assert_array_equal, v1, v2)
    names = ["kernel", "bias"] if kind == "lstm" else [
        "gates/kernel", "gates/bias", "candidate/kernel", "candidate/bias"]  # fmt: skip
    assert set(js.flatten(v1)) == {f"params/rnn/{kind}_cell/{n}" for n in names}

    def ours(p, xs, state):
        return js.apply(scanned, {"params": p}, xs, state)

    def theirs(p, xs, state):
        return js.apply(looped, {"params": p}, xs, state)

    _check_against(ours, theirs, (v1["params"], xs, state))


def test_rnn_matches_reference_loop_of_tf1_equations():
    xs = _x((2, 6, 3))
    state = layers.lstm_zero_state(2, 4)
    cell = functools.partial(layers.lstm_cell, units=4, bias_initializer=RANDN)

    def fn(xs):
        return layers.rnn(cell, xs, state)

    v = _init(fn, xs)
    outs, final = js.apply(fn, v, xs)
    p = v["params"]["rnn"]["lstm_cell"]
    s, want = state, []
    for t in range(6):
        y, s = _lstm_ref(xs[:, t], s, p["kernel"], p["bias"])
        want.append(y)
    _close(outs, jnp.stack(want, 1))
    _tree_close(final, s)


@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_sequence_length(reverse):
    kind, units = "gru", 3
    xs = _x((3, 5, 2))
    state = _zero(kind, 3, units)
    lengths = jnp.array([5, 2, 0])

    def fn(xs, state):
        return layers.rnn(_cell(kind, units), xs, state, sequence_length=lengths,
                          reverse=reverse)  # fmt: skip

    v = _init(fn, xs, state)
    outs, final = js.apply(fn, v, xs, state)
    p = v["params"]["rnn"]["gru_cell"]
    for b, length in enumerate(lengths.tolist()):
        h, want = state[b], np.zeros((5, units), np.float32)
        steps = range(length - 1, -1, -1) if reverse else range(length)
        for t in steps:
            y, h = _gru_ref(xs[b, t], h, p)
            want[t] = y
        _close(outs[b], want)
        _close(final[b], h)


def test_rnn_names_stacked_cells_and_reuse():
    xs = _x((2, 4, 3))

    def stacked(x, state):
        s0, s1 = state
        y, s0 = layers.lstm_cell(x, s0, 5, name="cell0")
        y, s1 = layers.gru_cell(y, s1, 2, name="cell1")
        return y, (s0, s1)

    def fn(xs):
        state = (layers.lstm_zero_state(2, 5), layers.gru_zero_state(2, 2))
        a, _ = layers.rnn(stacked, xs, state)
        b, _ = layers.rnn(stacked, xs, state)
        c, _ = layers.rnn(stacked, xs, state, name="rnn", reuse=True)
        with js.variable_scope("encoder"):
            d, _ = layers.rnn(stacked, xs, state, name="fw")
        return a, b, c, d

    v = js.init(fn, jax.random.key(0), xs)
    paths = list(js.flatten(v))
    assert paths[:6] == [
        "params/rnn/cell0/kernel",
        "params/rnn/cell0/bias",
        "params/rnn/cell1/gates/kernel",
        "params/rnn/cell1/gates/bias",
        "params/rnn/cell1/candidate/kernel",
        "params/rnn/cell1/candidate/bias",
    ]
    assert [p for p in paths if p.endswith("cell0/kernel")] == [
        "params/rnn/cell0/kernel",
        "params/rnn_1/cell0/kernel",
        "params/encoder/fw/cell0/kernel",
    ]
    assert v["params"]["rnn"]["cell0"]["kernel"].shape == (8, 20)  # no time axis
    a, b, c, d = jax.jit(lambda v, xs: js.apply(fn, v, xs))(v, xs)
    assert a.shape == (2, 4, 2)
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(a, b)
    eager = js.apply(fn, v, xs)
    _close(eager[3], d)


def test_rnn_reuse_of_missing_scope_is_an_error():
    def fn(xs):
        return layers.rnn(
            _cell("gru", 2), xs, _zero("gru", 2, 2), name="enc", reuse=True
        )

    with pytest.raises(ValueError, match="enc/gru_cell/gates/kernel does not exist"):
        js.init(fn, jax.random.key(0), _x((2, 3, 4)))


def test_rnn_carries_mutable_state_through_time():
    """A counter assigned in the cell is carried step to step (shared, mutable)."""

    def counting_cell(x, h):
        count = js.get_variable("steps", (), jnp.int32, trainable=False)
        js.assign(count, count + 1)
        return layers.gru_cell(x, h, 2)

    def fn(xs):
        return layers.rnn(counting_cell, xs, layers.gru_zero_state(2, 2))

    xs = _x((2, 6, 3))
    v = js.init(fn, jax.random.key(0), xs)
    assert v["state"] == {"rnn": {"steps": 0}}
    (_, _), v = js.apply(fn, v, xs, mutable=["state"])
    (_, _), v = js.apply(fn, v, xs, mutable=["state"])
    assert int(v["state"]["rnn"]["steps"]) == 12
    with pytest.raises(ValueError, match=r"rnn/steps.*mutable=\['state'\]"):
        js.apply(fn, v, xs)


@pytest.mark.parametrize(
    "xs,time_major,msg",
    [
        (jnp.zeros((3,)), False, r"time axis \(\[batch, time, ...\]\)"),
        ((jnp.zeros((2, 3, 1)), jnp.zeros((2, 4, 1))), False, r"disagree .* \[3, 4\]"),
        (jnp.zeros(()), True, r"\[time, batch, ...\]"),
    ],
)
def test_rnn_input_errors(xs, time_major, msg):
    def fn():
        with js.variable_scope("model"):
            return layers.rnn(
                _cell("gru", 2), xs, _zero("gru", 2, 2), time_major=time_major
            )

    with pytest.raises(ValueError, match=f"Layer model/rnn: rnn inputs .*{msg}"):
        js.init(fn, jax.random.key(0))


def test_rnn_bfloat16_cell_with_float32_state():
    xs = _x((2, 3, 4), dtype=BF16)
    cell = functools.partial(layers.lstm_cell, units=3, dtype=BF16)

    def fn(xs):
        return layers.rnn(cell, xs, layers.lstm_zero_state(2, 3))

    v = _init(fn, xs)
    outs, (c, h) = js.apply(fn, v, xs)
    assert outs.dtype == BF16 and c.dtype == h.dtype == F32  # state keeps its dtype
    p = jax.tree.map(lambda a: a.astype(F32), v["params"]["rnn"]["lstm_cell"])
    s = layers.lstm_zero_state(2, 3)
    for t in range(3):
        y, s = _lstm_ref(xs[:, t].astype(F32), s, p["kernel"], p["bias"])
        _close(outs[:, t], y, BF16)
    _tree_close((c, h), s, BF16)
