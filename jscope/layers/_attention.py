"""Multi-head dot-product attention (Vaswani et al., 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError
from jscope.layers import _checks
from jscope.layers._checks import Axes
from jscope.typing import ArrayLike, DTypeLike, Initializer, Reuse

_MHA = "multi_head_attention"

# The default logical axes (the table in `jscope.layers`): query, key and value
# project "embed" to ("heads", "kv"), the output projection back to "embed".
_KERNEL_AXES = ("embed", "heads", "kv")
_BIAS_AXES = ("heads", "kv")
_OUTPUT_KERNEL_AXES = ("heads", "kv", "embed")
_OUTPUT_BIAS_AXES = ("embed",)


def _check_inputs(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    for label, a in (("query", q), ("key", k), ("value", v)):
        if a.ndim < 2:
            raise _checks.error(
                LayerArgumentError,
                _MHA,
                f"{label} must have rank >= 2 ([batch..., length, features]), "
                f"got shape {tuple(a.shape)}. Add a length axis, e.g. "
                f"{label}[None] for a single position.",
            )
    if k.shape[:-1] != v.shape[:-1]:
        raise _checks.error(
            LayerArgumentError,
            _MHA,
            f"key and value must agree on [batch..., length], got shapes "
            f"{tuple(k.shape)} and {tuple(v.shape)}. Pass one value per key.",
        )
    if q.shape[:-2] != k.shape[:-2]:
        raise _checks.error(
            LayerArgumentError,
            _MHA,
            f"query and key must have the same batch shape, got shapes "
            f"{tuple(q.shape)} and {tuple(k.shape)}. Broadcast them to one batch "
            "shape first.",
        )


def _mask(
    mask: ArrayLike | None, causal: bool, logits_shape: tuple[int, ...]
) -> jax.Array | None:
    """The boolean mask ``[batch..., heads, q, k]`` (True attends), or None."""
    n_batch = len(logits_shape) - 3
    out = None
    if mask is not None:
        m = jnp.asarray(mask)
        if not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer)):
            raise _checks.error(
                LayerTypeError,
                _MHA,
                f"mask must be boolean (True = attend), got dtype {m.dtype}. "
                "Additive (float) masks are not supported: pass mask > 0 or "
                "a boolean array.",
            )
        if m.ndim == n_batch + 2:  # [batch..., q, k]: the same for every head
            m = m[..., None, :, :]
        elif m.ndim != n_batch + 3:
            raise _checks.error(
                LayerArgumentError,
                _MHA,
                f"mask must have shape [batch..., heads or 1, q_length, "
                f"k_length] or [batch..., q_length, k_length] (broadcastable "
                f"to {logits_shape}), got shape {tuple(m.shape)}. Add or remove "
                "axes to match.",
            )
        try:
            jnp.broadcast_shapes(m.shape, logits_shape)
        except ValueError:
            raise _checks.error(
                LayerArgumentError,
                _MHA,
                f"mask of shape {tuple(np.shape(mask))} does not broadcast to the "
                f"attention weights' shape {logits_shape} [batch..., heads, "
                "q_length, k_length]. Use sizes equal to those or 1.",
            ) from None
        out = m.astype(jnp.bool_)
    if causal:
        tri = jnp.tril(jnp.ones(logits_shape[-2:], jnp.bool_))
        out = tri if out is None else jnp.logical_and(out, tri)
    return out


def _projection_axes(shape, bias_shape, axes, what, name):
    """The checked axes ``(kernel, bias)`` of projection ``name``'s variables.

    ``axes`` is the pair of arguments, ``what`` their names' prefix (``""`` or
    ``"output_"``).
    """
    kernel = _checks.axes(
        axes[0], shape, variable=f"{name}/kernel", what=f"{what}kernel_axes",
        layer=_MHA, default=_OUTPUT_KERNEL_AXES if what else _KERNEL_AXES,
    )  # fmt: skip
    bias = _checks.axes(
        axes[1], bias_shape, variable=f"{name}/bias", what=f"{what}bias_axes",
        layer=_MHA, default=_OUTPUT_BIAS_AXES if what else _BIAS_AXES,
    )  # fmt: skip
    return kernel, bias


def _project(x, name, shape, bias_shape, spec, opts, axes):
    """``einsum(spec, x, <name>/kernel) + <name>/bias``, in the kernel's dtype.

    ``axes`` are the checked logical axes of the kernel and the bias.
    """
    kernel_init, bias_init, dtype, use_bias, precision = opts
    kernel = js.get_variable(f"{name}/kernel", shape, dtype, kernel_init, axes=axes[0])
    y = jnp.einsum(spec, x.astype(kernel.dtype), kernel, precision=precision)
    if use_bias:
        bias = js.get_variable(
            f"{name}/bias", bias_shape, dtype, bias_init or js.initializers.zeros(),
            axes=axes[1],
        )  # fmt: skip
        y = y + bias.astype(y.dtype)
    return y


def _heads(x, name, heads, dim, opts, axes):
    """Projects ``[..., length, features]`` to ``[..., length, heads, dim]``."""
    shape = (x.shape[-1], heads, dim)
    return _project(x, name, shape, (heads, dim), "...tf,fhd->...thd", opts, axes)


def _dropout(weights: jax.Array, rate: float) -> jax.Array:
    key = js.next_rng_key("dropout")
    keep = jax.random.bernoulli(key, 1.0 - rate, weights.shape)
    return jnp.where(keep, weights / jnp.asarray(1.0 - rate, weights.dtype), 0)


def multi_head_attention(
    query: ArrayLike,
    key: ArrayLike | None = None,
    value: ArrayLike | None = None,
    *,
    num_heads: int,
    key_dim: int | None = None,
    value_dim: int | None = None,
    output_dim: int | None = None,
    mask: ArrayLike | None = None,
    causal: bool = False,
    dropout_rate: float = 0.0,
    training: bool = False,
    use_bias: bool = True,
    kernel_initializer: Initializer | None = None,
    bias_initializer: Initializer | None = None,
    return_attention_scores: bool = False,
    dtype: DTypeLike | None = None,
    precision: lax.PrecisionLike = None,
    name: str | None = None,
    reuse: Reuse = None,
    kernel_axes: Axes | None = ("embed", "heads", "kv"),
    bias_axes: Axes | None = ("heads", "kv"),
    output_kernel_axes: Axes | None = ("heads", "kv", "embed"),
    output_bias_axes: Axes | None = ("embed",),
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Multi-head scaled dot-product attention, as Keras's ``MultiHeadAttention``.

    ``query``, ``key`` and ``value`` are projected to ``num_heads`` heads; each
    head attends with ``softmax(q k^T / sqrt(key_dim))``; the heads' results
    are projected to ``output_dim``. Variables (scope ``multi_head_attention``):

    - ``query/kernel`` ``[query_features, heads, key_dim]``, ``query/bias``
      ``[heads, key_dim]``;
    - ``key/kernel`` ``[key_features, heads, key_dim]``, ``key/bias``
      ``[heads, key_dim]``;
    - ``value/kernel`` ``[value_features, heads, value_dim]``, ``value/bias``
      ``[heads, value_dim]``;
    - ``output/kernel`` ``[heads, value_dim, output_dim]``, ``output/bias``
      ``[output_dim]``.

    These are Keras's and Flax's ``MultiHeadDotProductAttention`` layouts (Flax
    names the output projection ``out``), so their weights load unchanged. The
    default kernel initializer is jscope's Glorot uniform with TF1's fans of the
    3-D shape, as Keras's ``EinsumDense`` computes them.

    Masks: ``mask`` is boolean (or 0/1 ints), True where a query may attend to a
    key, of shape ``[batch..., heads or 1, q_length, k_length]`` or, the same for
    every head, ``[batch..., q_length, k_length]``; it broadcasts. ``causal``
    also masks keys after the query's position (``tril`` of ``[q_length,
    k_length]``, aligned at the first position). A query with no key to attend
    to gets uniform weights, as in Flax. Attention dropout (``training=True``
    and ``dropout_rate > 0``) drops weights independently with keep mask
    ``jax.random.bernoulli(js.next_rng_key("dropout"), 1 - rate, shape)`` and
    rescales by ``1 / (1 - rate)``: `js.apply` needs ``rngs={"dropout": key}``.

    The projections compute in the query kernel's dtype (inputs are cast to
    it); the softmax is computed in float32. A key/value cache for incremental
    decoding is not provided: pass the whole prefix as ``key``/``value``.

    Args:
      query: ``[batch..., q_length, query_features]``.
      key: ``[batch..., k_length, key_features]``; defaults to ``query``.
      value: ``[batch..., k_length, value_features]``; defaults to ``key``.
      num_heads: The number of heads.
      key_dim: The size of each query/key head; defaults to ``query_features //
        num_heads``.
      value_dim: The size of each value head; defaults to ``key_dim``.
      output_dim: The output features; defaults to ``query_features``.
      mask: Optional boolean mask, True = attend (see above).
      causal: Whether to mask future keys.
      dropout_rate: The attention-weights dropout rate, in ``[0, 1)``.
      training: Whether to apply dropout.
      use_bias: Whether the projections have biases.
      kernel_initializer: For the four kernels; None uses the scope's, else
        Glorot uniform.
      bias_initializer: For the biases; None is zeros.
      return_attention_scores: Also return the attention weights ``[batch...,
        heads, q_length, k_length]`` (before dropout, as Keras).
      dtype: The variables' dtype; None uses the scope's, else float32.
      precision: Passed to the einsums.
      name: The variable scope; defaults to ``multi_head_attention``.
      reuse: Whether to share the variables of an earlier call with this name.
      kernel_axes: The logical axes of the query, key and value kernels for
        sharding rules, as `js.get_variable`'s ``axes``; defaults from the
        table in `jscope.layers`: ``("embed", "heads", "kv")``. None: no names.
      bias_axes: Their biases' logical axes (``("heads", "kv")``).
      output_kernel_axes: The output kernel's logical axes (``("heads", "kv",
        "embed")``).
      output_bias_axes: The output bias's logical axes (``("embed",)``).

    Returns:
      ``[batch..., q_length, output_dim]``, and the attention weights if
      ``return_attention_scores``.

    Raises:
      LayerArgumentError: A bad shape, ``num_heads`` or dimension, a mask that
        does not broadcast, ``dropout_rate`` outside ``[0, 1)``, or axes that do
        not name each dimension of their variable (a ``ValueError``).
      LayerTypeError: A non-int size, a float mask, or axes that are not names
        (a ``TypeError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f(x):
      ...     return js.layers.multi_head_attention(x, num_heads=2, causal=True)
      >>> x = jnp.ones((1, 5, 8))                       # [batch, length, features]
      >>> v = js.init(f, jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, v)["params"]["multi_head_attention"]["query"]
      {'bias': (2, 4), 'kernel': (8, 2, 4)}
      >>> js.apply(f, v, x).shape
      (1, 5, 8)
    """
    with js.variable_scope(name, default_name=_MHA, reuse=reuse):
        q_in = jnp.asarray(query)
        k_in = q_in if key is None else jnp.asarray(key)
        v_in = k_in if value is None else jnp.asarray(value)
        _check_inputs(q_in, k_in, v_in)
        heads = _checks.positive_int(num_heads, "num_heads", _MHA)
        if key_dim is None:
            if q_in.shape[-1] % heads:
                raise _checks.error(
                    LayerArgumentError,
                    _MHA,
                    f"cannot split {q_in.shape[-1]} query features into "
                    f"num_heads={heads} heads (remainder "
                    f"{q_in.shape[-1] % heads}): pass key_dim, or a num_heads "
                    f"that divides {q_in.shape[-1]}.",
                )
            key_dim = q_in.shape[-1] // heads
        key_dim = _checks.positive_int(key_dim, "key_dim", _MHA)
        value_dim = _checks.positive_int(
            key_dim if value_dim is None else value_dim, "value_dim", _MHA
        )
        out_dim = _checks.positive_int(
            q_in.shape[-1] if output_dim is None else output_dim, "output_dim", _MHA
        )
        _checks.rate(dropout_rate, "dropout_rate", _MHA)
        opts = (kernel_initializer, bias_initializer, dtype, use_bias, precision)
        axes = _projection_axes(
            (q_in.shape[-1], heads, key_dim), (heads, key_dim),
            (kernel_axes, bias_axes), "", "query",
        )  # fmt: skip
        out_shape = (heads, value_dim, out_dim)
        out_axes = _projection_axes(
            out_shape, (out_dim,), (output_kernel_axes, output_bias_axes),
            "output_", "output",
        )  # fmt: skip
        q = _heads(q_in, "query", heads, key_dim, opts, axes)
        k = _heads(k_in, "key", heads, key_dim, opts, axes)
        v = _heads(v_in, "value", heads, value_dim, opts, axes)
        dt = q.dtype
        q = q / jnp.sqrt(np.float32(key_dim)).astype(dt)
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k, precision=precision)
        logits = logits.astype(jnp.promote_types(dt, jnp.float32))
        m = _mask(mask, causal, logits.shape)
        if m is not None:
            logits = jnp.where(m, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(dt)
        attended = weights
        if training and dropout_rate > 0.0:
            attended = _dropout(weights, dropout_rate)
        o = jnp.einsum(
            "...hqk,...khd->...qhd", attended, v.astype(dt), precision=precision
        )
        y = _project(
            o, "output", out_shape, (out_dim,), "...qhd,hdo->...qo", opts, out_axes
        )
        if return_attention_scores:
            return y, weights
        return y
