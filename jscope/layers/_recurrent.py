"""Recurrent cells (TF1's ``LSTMCell`` and ``GRUCell``) and `rnn` over time.

A cell is a plain function ``cell(inputs, state) -> (output, new_state)`` for
one time step, with TF1's variables: ``lstm_cell/kernel`` and
``lstm_cell/bias``; ``gru_cell/gates/{kernel,bias}`` and
``gru_cell/candidate/{kernel,bias}``. `rnn` runs a cell over a sequence with
`js.scan`, every step sharing one set of variables, as ``tf.nn.dynamic_rnn``
did with reuse: its variables are ``rnn/lstm_cell/kernel``, ... .

The cells compute in their kernel's dtype (inputs and state are cast to it),
as ``dense`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
from jax import lax

import jscope as js
from jscope.errors import LayerArgumentError
from jscope.layers import _checks
from jscope.layers._checks import Axes
from jscope.typing import ArrayLike, DTypeLike, Initializer, Reuse

Cell: TypeAlias = Callable[[Any, Any], tuple[Any, Any]]
Activation: TypeAlias = Callable[[jax.Array], jax.Array]

# The cells' default logical axes (the table in `jscope.layers`): `dense`'s, the
# kernels mapping the concatenated [inputs, state] to the gates.
_KERNEL_AXES = ("embed", "mlp")
_BIAS_AXES = ("mlp",)


# --------------------------------------------------------------------- helpers


def _check_state(x: jax.Array, part: ArrayLike, units: int, label: str, kind: str):
    part = jnp.asarray(part)
    want = (*x.shape[:-1], units)
    if part.shape != want:
        raise _checks.error(
            LayerArgumentError,
            kind,
            f"state {label} must have shape {want} (the inputs' batch shape "
            f"{tuple(x.shape[:-1])} and units={units}), got {tuple(part.shape)}. "
            f"Make the state with js.layers.{kind.removesuffix('_cell')}_zero_state("
            f"{tuple(x.shape[:-1])}, {units}).",
        )
    return part


def _inputs(inputs: ArrayLike, kind: str) -> jax.Array:
    x = jnp.asarray(inputs)
    _checks.rank(x, kind, ">= 1", "[batch..., input_size]")
    return x


def _cell_axes(
    kernel_axes: Any, bias_axes: Any, shape: tuple[int, int], kind: str, prefix=""
) -> tuple[Any, Any]:
    """The checked ``(kernel_axes, bias_axes)`` of ``<prefix>kernel`` and bias."""
    k_axes = _checks.axes(
        kernel_axes, shape, variable=f"{prefix}kernel", what="kernel_axes",
        layer=kind, default=_KERNEL_AXES,
    )  # fmt: skip
    b_axes = _checks.axes(
        bias_axes, shape[1:], variable=f"{prefix}bias", what="bias_axes",
        layer=kind, default=_BIAS_AXES,
    )  # fmt: skip
    return k_axes, b_axes


def _matmul(a: jax.Array, b: jax.Array, precision: Any) -> jax.Array:
    return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision)


# ------------------------------------------------------------------- lstm_cell


def lstm_cell(
    inputs: ArrayLike,
    state: tuple[ArrayLike, ArrayLike],
    units: int,
    forget_bias: float = 1.0,
    activation: Activation | None = jnp.tanh,
    kernel_initializer: Initializer | None = None,
    bias_initializer: Initializer | None = None,
    dtype: DTypeLike | None = None,
    precision: lax.PrecisionLike = None,
    name: str | None = None,
    reuse: Reuse = None,
    kernel_axes: Axes | None = ("embed", "mlp"),
    bias_axes: Axes | None = ("mlp",),
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One step of TF1's ``tf.nn.rnn_cell.LSTMCell`` (no peepholes, no projection).

    With ``[i, j, f, o] = split(concat([inputs, h]) @ kernel + bias, 4)`` (input
    gate, new input, forget gate, output gate, in TF1's order)::

        new_c = c * sigmoid(f + forget_bias) + sigmoid(i) * activation(j)
        new_h = activation(new_c) * sigmoid(o)

    Variables: ``lstm_cell/kernel`` ``[input_size + units, 4 * units]`` (Glorot
    uniform by default) and ``lstm_cell/bias`` ``[4 * units]`` (zeros), so TF1
    ``LSTMCell`` and ``BasicLSTMCell`` checkpoints load as they are (TF1 named
    the latter's scope ``basic_lstm_cell``: pass ``name=``). Haiku's ``LSTM``
    uses the same layout and gate order with ``forget_bias=1``.

    Args:
      inputs: ``[batch..., input_size]``.
      state: ``(c, h)``, TF1's ``LSTMStateTuple`` order, each ``[batch...,
        units]``; `lstm_zero_state` makes a zero one.
      units: The number of units, a positive int.
      forget_bias: Added to the forget gate's pre-activation.
      activation: The activation of the new input and the cell; None is tanh.
      kernel_initializer: None uses the scope's, else Glorot uniform.
      bias_initializer: None is zeros.
      dtype: The variables' dtype (and the compute dtype); None uses the
        scope's, else float32.
      precision: Passed to `jax.lax.dot_general`.
      name: The variable scope; defaults to ``lstm_cell``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.
      kernel_axes: The kernel's logical axes for sharding rules, as
        `js.get_variable`'s ``axes``; defaults from the table in
        `jscope.layers`: ``("embed", "mlp")``, as `dense`'s. None: no names.
      bias_axes: The bias's logical axes, likewise (``("mlp",)``).

    Returns:
      ``(new_h, (new_c, new_h))``: the output and the new state.

    Raises:
      LayerArgumentError: ``units`` is not positive, a state part's shape is
        wrong, or axes do not name each dimension of their variable (a
        ``ValueError``).
      LayerTypeError: ``units`` is not an int, or axes are not names (a
        ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def step(x):
      ...     state = js.layers.lstm_zero_state(2, 3)
      ...     return js.layers.lstm_cell(x, state, units=3)
      >>> v = js.init(step, jax.random.key(0), jnp.ones((2, 4)))
      >>> jax.tree.map(jnp.shape, v)
      {'params': {'lstm_cell': {'bias': (12,), 'kernel': (7, 12)}}}
      >>> out, (c, h) = js.apply(step, v, jnp.ones((2, 4)))
      >>> out.shape, bool((out == h).all())
      ((2, 3), True)
    """
    with js.variable_scope(name, default_name="lstm_cell", reuse=reuse):
        units = _checks.positive_int(units, "units", "lstm_cell")
        x = _inputs(inputs, "lstm_cell")
        if not isinstance(state, tuple | list) or len(state) != 2:
            raise _checks.error(
                LayerArgumentError,
                "lstm_cell",
                f"state must be a pair (c, h), got {type(state).__name__}. Make "
                "one with js.layers.lstm_zero_state(batch_size, units).",
            )
        c = _check_state(x, state[0], units, "c", "lstm_cell")
        h = _check_state(x, state[1], units, "h", "lstm_cell")
        act = jnp.tanh if activation is None else activation
        shape = (x.shape[-1] + units, 4 * units)
        k_axes, b_axes = _cell_axes(kernel_axes, bias_axes, shape, "lstm_cell")
        kernel = js.get_variable(
            "kernel", shape, dtype, kernel_initializer, axes=k_axes
        )
        bias = js.get_variable(
            "bias", (4 * units,), dtype,
            bias_initializer or js.initializers.zeros(), axes=b_axes,
        )  # fmt: skip
        dt = kernel.dtype
        xh = jnp.concatenate([x.astype(dt), h.astype(dt)], axis=-1)
        gates = _matmul(xh, kernel, precision) + bias.astype(dt)
        i, j, f, o = jnp.split(gates, 4, axis=-1)
        new_c = c.astype(dt) * jax.nn.sigmoid(f + jnp.asarray(forget_bias, dt))
        new_c = new_c + jax.nn.sigmoid(i) * act(j)
        new_h = act(new_c) * jax.nn.sigmoid(o)
        return new_h, (new_c, new_h)


def lstm_zero_state(
    batch_size: int | tuple[int, ...], units: int, dtype: DTypeLike = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """A zero ``(c, h)`` state for `lstm_cell` (TF1's ``cell.zero_state``).

    Args:
      batch_size: The batch size, or the batch shape.
      units: The cell's units.
      dtype: The state's dtype.

    Returns:
      ``(c, h)``, each zeros of shape ``[*batch, units]``.

    Example:
      >>> import jscope as js
      >>> c, h = js.layers.lstm_zero_state(2, 3)
      >>> c.shape, h.shape
      ((2, 3), (2, 3))
    """
    shape = (*(batch_size if isinstance(batch_size, tuple) else (batch_size,)), units)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


# -------------------------------------------------------------------- gru_cell


def gru_cell(
    inputs: ArrayLike,
    state: ArrayLike,
    units: int,
    activation: Activation | None = jnp.tanh,
    kernel_initializer: Initializer | None = None,
    bias_initializer: Initializer | None = None,
    dtype: DTypeLike | None = None,
    precision: lax.PrecisionLike = None,
    name: str | None = None,
    reuse: Reuse = None,
    kernel_axes: Axes | None = ("embed", "mlp"),
    bias_axes: Axes | None = ("mlp",),
) -> tuple[jax.Array, jax.Array]:
    """One step of TF1's ``tf.nn.rnn_cell.GRUCell`` (Cho et al., 2014).

    With ``[r, u] = split(sigmoid(concat([inputs, h]) @ gates/kernel +
    gates/bias), 2)`` (reset gate, update gate, in TF1's order)::

        c = activation(concat([inputs, r * h]) @ candidate/kernel + candidate/bias)
        new_h = u * h + (1 - u) * c

    Variables, as TF1: ``gru_cell/gates/kernel`` ``[input_size + units, 2 *
    units]``, ``gru_cell/gates/bias`` ``[2 * units]`` (ones: gates start open),
    ``gru_cell/candidate/kernel`` ``[input_size + units, units]`` and
    ``gru_cell/candidate/bias`` ``[units]`` (zeros). The reset gate multiplies
    the state before the candidate's product (Keras's ``reset_after=False``).

    Args:
      inputs: ``[batch..., input_size]``.
      state: ``h``, ``[batch..., units]``; `gru_zero_state` makes a zero one.
      units: The number of units, a positive int.
      activation: The candidate's activation; None is tanh.
      kernel_initializer: For both kernels; None uses the scope's, else Glorot
        uniform.
      bias_initializer: For both biases; None is TF1's (ones for the gates,
        zeros for the candidate).
      dtype: The variables' dtype (and the compute dtype); None uses the
        scope's, else float32.
      precision: Passed to `jax.lax.dot_general`.
      name: The variable scope; defaults to ``gru_cell``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.
      kernel_axes: Both kernels' logical axes for sharding rules, as
        `js.get_variable`'s ``axes``; defaults from the table in
        `jscope.layers`: ``("embed", "mlp")``, as `dense`'s. None: no names.
      bias_axes: Both biases' logical axes, likewise (``("mlp",)``).

    Returns:
      ``(new_h, new_h)``: the output and the new state.

    Raises:
      LayerArgumentError: ``units`` is not positive, the state's shape is
        wrong, or axes do not name each dimension of their variable (a
        ``ValueError``).
      LayerTypeError: ``units`` is not an int, or axes are not names (a
        ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def step(x):
      ...     return js.layers.gru_cell(x, js.layers.gru_zero_state(2, 3), units=3)
      >>> v = js.init(step, jax.random.key(0), jnp.ones((2, 4)))
      >>> list(js.flatten(v["params"]))
      ['gru_cell/gates/kernel', 'gru_cell/gates/bias', 'gru_cell/candidate/kernel',
       'gru_cell/candidate/bias']
      >>> js.apply(step, v, jnp.ones((2, 4)))[0].shape
      (2, 3)
    """
    with js.variable_scope(name, default_name="gru_cell", reuse=reuse):
        units = _checks.positive_int(units, "units", "gru_cell")
        x = _inputs(inputs, "gru_cell")
        h = _check_state(x, state, units, "h", "gru_cell")
        act = jnp.tanh if activation is None else activation
        n_in = x.shape[-1] + units
        k_axes, b_axes = _cell_axes(
            kernel_axes, bias_axes, (n_in, 2 * units), "gru_cell", "gates/"
        )
        gate_kernel = js.get_variable(
            "gates/kernel", (n_in, 2 * units), dtype, kernel_initializer,
            axes=k_axes,
        )  # fmt: skip
        gate_bias = js.get_variable(
            "gates/bias", (2 * units,), dtype,
            bias_initializer or js.initializers.constant(1.0), axes=b_axes,
        )  # fmt: skip
        cand_kernel = js.get_variable(
            "candidate/kernel", (n_in, units), dtype, kernel_initializer,
            axes=k_axes,
        )  # fmt: skip
        cand_bias = js.get_variable(
            "candidate/bias", (units,), dtype,
            bias_initializer or js.initializers.zeros(), axes=b_axes,
        )  # fmt: skip
        dt = gate_kernel.dtype
        x, h = x.astype(dt), h.astype(dt)
        value = _matmul(jnp.concatenate([x, h], axis=-1), gate_kernel, precision)
        r, u = jnp.split(jax.nn.sigmoid(value + gate_bias.astype(dt)), 2, axis=-1)
        cand = _matmul(jnp.concatenate([x, r * h], axis=-1), cand_kernel, precision)
        c = act(cand + cand_bias.astype(dt))
        new_h = u * h + (1 - u) * c
        return new_h, new_h


def gru_zero_state(
    batch_size: int | tuple[int, ...], units: int, dtype: DTypeLike = jnp.float32
) -> jax.Array:
    """A zero state ``h`` for `gru_cell` (TF1's ``cell.zero_state``).

    Example:
      >>> import jscope as js
      >>> js.layers.gru_zero_state((2, 5), 3).shape
      (2, 5, 3)
    """
    shape = (*(batch_size if isinstance(batch_size, tuple) else (batch_size,)), units)
    return jnp.zeros(shape, dtype)


# ------------------------------------------------------------------------- rnn


def _time_length(xs: Any, time_major: bool) -> int:
    leaves = jax.tree.leaves(xs)
    axis = 0 if time_major else 1
    if not leaves or any(leaf.ndim <= axis for leaf in leaves):
        layout = "[time, batch, ...]" if time_major else "[batch, time, ...]"
        raise _checks.error(
            LayerArgumentError,
            "rnn",
            f"inputs must be arrays with a time axis ({layout}), got shapes "
            f"{[tuple(leaf.shape) for leaf in leaves]}. Reshape them to {layout}"
            f"{'' if time_major else ', or pass time_major=True'}.",
        )
    lengths = {leaf.shape[axis] for leaf in leaves}
    if len(lengths) != 1:
        raise _checks.error(
            LayerArgumentError,
            "rnn",
            f"inputs disagree on the number of time steps (axis {axis}): "
            f"{sorted(lengths)}. Pad them to one length and pass sequence_length.",
        )
    return lengths.pop()


def _keep_where(valid: jax.Array, new: Any, old: Any) -> Any:
    def pick(n, o):
        mask = valid.reshape(valid.shape + (1,) * (n.ndim - valid.ndim))
        return jnp.where(mask, n, o)

    return jax.tree.map(pick, new, old)


def rnn(
    cell_fn: Cell,
    inputs: Any,
    initial_state: Any,
    sequence_length: ArrayLike | None = None,
    time_major: bool = False,
    reverse: bool = False,
    unroll: int | bool = 1,
    name: str | None = None,
    reuse: Reuse = None,
) -> tuple[Any, Any]:
    """Runs ``cell_fn`` over time, as ``tf.nn.dynamic_rnn``, with `js.scan`.

    Every step calls ``cell_fn(inputs_t, state) -> (output_t, new_state)`` in
    the scope ``rnn`` (or ``name``), and every step shares one set of variables
    (the cell creates them once, as TF1's reuse did); mutable collections are
    carried from step to step. ``cell_fn`` is any function of that form, e.g.
    ``functools.partial(js.layers.lstm_cell, units=64)``, or one that stacks
    several cells under different names.

    Args:
      cell_fn: ``(inputs_t, state) -> (output_t, new_state)``.
      inputs: An array (or a pytree of arrays) ``[batch, time, ...]``, or
        ``[time, batch, ...]`` with ``time_major=True``.
      initial_state: The state before the first step; each step's new state is
        cast to its dtypes.
      sequence_length: Optional int array ``[batch]``: at steps ``t >=
        sequence_length[b]`` example ``b`` keeps its state and outputs zeros,
        as in TF1 (so the final state is the state at each example's end).
      time_major: Whether time is axis 0 of the inputs and outputs.
      reverse: Whether to run from the last step to the first (outputs stay in
        time order). With ``sequence_length`` the padded steps come first and
        leave the state unchanged, so each example starts from its last step.
      unroll: As in `jax.lax.scan`.
      name: The variable scope; defaults to ``rnn``, uniquified.
      reuse: Whether to share the variables of an earlier call with this name.

    Returns:
      ``(outputs, final_state)``, outputs stacked on the time axis.

    Raises:
      LayerArgumentError: The inputs have no time axis, or disagree on its
        length (a ``ValueError``).

    Example:
      >>> import functools, jax, jax.numpy as jnp, jscope as js
      >>> cell = functools.partial(js.layers.lstm_cell, units=3)
      >>> def encode(x):
      ...     return js.layers.rnn(cell, x, js.layers.lstm_zero_state(2, 3))
      >>> x = jnp.ones((2, 5, 4))                       # [batch, time, features]
      >>> v = js.init(encode, jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, v)                   # one set of weights
      {'params': {'rnn': {'lstm_cell': {'bias': (12,), 'kernel': (7, 12)}}}}
      >>> outputs, (c, h) = js.apply(encode, v, x)
      >>> outputs.shape, bool((outputs[:, -1] == h).all())
      ((2, 5, 3), True)
    """
    with js.variable_scope(name, default_name="rnn", reuse=reuse):
        inputs = jax.tree.map(jnp.asarray, inputs)
        n = _time_length(inputs, time_major)
        xs = (
            inputs
            if time_major
            else jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), inputs)
        )
        lengths = None if sequence_length is None else jnp.asarray(sequence_length)

        def step(state, inp):
            x, t = inp
            out, new = cell_fn(x, state)
            new = jax.tree.map(lambda n, o: n.astype(o.dtype), new, state)
            if lengths is not None:
                valid = t < lengths
                new = _keep_where(valid, new, state)
                out = _keep_where(valid, out, jax.tree.map(jnp.zeros_like, out))
            return new, out

        state0 = jax.tree.map(jnp.asarray, initial_state)
        final, outs = js.scan(step, reverse=reverse, unroll=unroll)(
            state0, (xs, jnp.arange(n))
        )
        if not time_major:
            outs = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), outs)
        return outs, final
