"""Embedding lookup and the tied output projection that reuses its table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError
from jscope.layers import _checks
from jscope.layers._checks import Axes
from jscope.typing import ArrayLike, DTypeLike, Initializer, Regularizer, Reuse

_EMBEDDING_AXES = ("vocab", "embed")
"""The table's default logical axes (the table in `jscope.layers`)."""


def _table(
    vocab_size, embed_dim, initializer, regularizer, trainable, dtype, axes, layer
):
    vocab_size = _checks.positive_int(vocab_size, "vocab_size", layer)
    embed_dim = _checks.positive_int(embed_dim, "embed_dim", layer)
    shape = (vocab_size, embed_dim)
    axes = _checks.axes(
        axes, shape, variable="embeddings", what="embedding_axes", layer=layer,
        default=_EMBEDDING_AXES,
    )  # fmt: skip
    if initializer is None and js.get_variable_scope().initializer is None:
        initializer = js.initializers.random_normal(stddev=embed_dim**-0.5)
    return js.get_variable(
        "embeddings", shape, dtype, initializer, regularizer, trainable=trainable,
        axes=axes,
    )  # fmt: skip


def embedding(
    ids: ArrayLike,
    vocab_size: int,
    embed_dim: int,
    initializer: Initializer | None = None,
    regularizer: Regularizer | None = None,
    trainable: bool = True,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    reuse: Reuse = None,
    embedding_axes: Axes | None = ("vocab", "embed"),
) -> jax.Array:
    """Looks ``ids`` up in a table ``embeddings`` of shape ``[vocab_size, embed_dim]``.

    TF1's ``tf.nn.embedding_lookup(params, ids)`` over a table made with
    ``get_variable`` (Keras's variable name, ``embeddings``), in the scope
    ``embedding``, ``embedding_1``, ... or ``name``. The result has shape
    ``ids.shape + (embed_dim,)``. Ids outside ``[0, vocab_size)``, negative ones
    included, give rows of NaN (TF1 raised on CPU; a jitted function cannot),
    so a bad id shows in the loss instead of silently reading another row.

    The default initializer is normal with standard deviation
    ``1 / sqrt(embed_dim)`` (Flax's ``Embed`` default): rows of unit expected
    norm, and logits of unit scale from `embedding_attend` with the same table.
    A scope-level initializer, if any, is used instead, as for `js.get_variable`.

    Args:
      ids: An integer array of any shape.
      vocab_size: The number of rows.
      embed_dim: The size of each row.
      initializer: The table's initializer (see above).
      regularizer: ``(table) -> scalar`` for `js.get_regularization_loss`.
      trainable: Whether the table goes to ``params`` (else ``state``).
      dtype: The table's dtype; None uses the scope's, else float32.
      name: The variable scope's name; None picks ``embedding``, ...
      reuse: ``True`` or `js.AUTO_REUSE` shares an earlier call's table.
      embedding_axes: The table's logical axes for sharding rules, as
        `js.get_variable`'s ``axes``; defaults from the table in
        `jscope.layers`: ``("vocab", "embed")``. None: no names.

    Returns:
      An array ``ids.shape + (embed_dim,)`` in the table's dtype.

    Raises:
      LayerTypeError: ``ids`` are not integers, a size is not an int, or
        ``embedding_axes`` are not names (a ``TypeError``).
      LayerArgumentError: A size is not positive, or ``embedding_axes`` do not
        name each dimension of the table (a ``ValueError``).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> f = lambda ids: js.layers.embedding(ids, vocab_size=10, embed_dim=4)
      >>> ids = jnp.array([[1, 2, 3]])
      >>> v = js.init(f, jax.random.key(0), ids)
      >>> v["params"]["embedding"]["embeddings"].shape, js.apply(f, v, ids).shape
      ((10, 4), (1, 3, 4))
    """
    with js.variable_scope(name, default_name="embedding", reuse=reuse):
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise _checks.error(
                LayerTypeError,
                "embedding",
                f"ids must be integers, got dtype {ids.dtype}. Cast them with "
                "ids.astype(jnp.int32).",
            )
        table = _table(
            vocab_size, embed_dim, initializer, regularizer, trainable, dtype,
            embedding_axes, "embedding",
        )  # fmt: skip
        if jnp.issubdtype(ids.dtype, jnp.signedinteger):
            ids = jnp.where(ids < 0, table.shape[0], ids)
        return jnp.take(table, ids, axis=0, mode="fill")


def embedding_attend(
    inputs: ArrayLike,
    vocab_size: int,
    embed_dim: int,
    initializer: Initializer | None = None,
    dtype: DTypeLike | None = None,
    precision: lax.PrecisionLike = None,
    name: str | js.VariableScope = "embedding",
    reuse: Reuse = True,
    embedding_axes: Axes | None = ("vocab", "embed"),
) -> jax.Array:
    """Logits ``inputs @ embeddings.T`` over an `embedding`'s table (tied weights).

    Reopens the scope ``name`` (default ``embedding``, the first `embedding`
    layer's scope in the current scope) with ``reuse=True`` and reads its
    ``embeddings`` table, so the output projection of a language model shares
    its input embedding (as Flax's ``Embed.attend``). Pass the ``name`` the
    `embedding` layer got (``embedding_1``, ``"tok"``, a captured
    `js.VariableScope`). With ``reuse=js.AUTO_REUSE`` the table is created here
    if it does not exist yet, with `embedding`'s default initializer.

    Args:
      inputs: An array ``[..., embed_dim]``.
      vocab_size: The table's number of rows (checked against the table).
      embed_dim: The table's row size (checked against the table and inputs).
      initializer: Used only when ``reuse=js.AUTO_REUSE`` creates the table.
      dtype: The table's dtype; None uses the scope's, else float32.
      precision: Passed to `jax.lax.dot_general`.
      name: The scope holding the table.
      reuse: ``True`` (the default: the table must exist) or `js.AUTO_REUSE`.
      embedding_axes: The table's logical axes, as `embedding`'s (pass the
        same ones; the defaults are the table in `jscope.layers`).

    Returns:
      An array ``[..., vocab_size]`` in the table's dtype.

    Raises:
      VariableNotFoundError: The table does not exist ("does not exist").
      ShapeMismatchError: Its shape differs ("Trying to share variable").
      LayerArgumentError: ``inputs``' last axis is not ``embed_dim``.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def lm(ids):
      ...     h = js.layers.embedding(ids, 10, 4)
      ...     return js.layers.embedding_attend(h, 10, 4)
      >>> ids = jnp.array([[1, 2, 3]])
      >>> v = js.init(lm, jax.random.key(0), ids)
      >>> list(js.flatten(v)), js.apply(lm, v, ids).shape
      (['params/embedding/embeddings'], (1, 3, 10))
    """
    with js.variable_scope(name, reuse=reuse):
        x = jnp.asarray(inputs)
        table = _table(
            vocab_size, embed_dim, initializer, None, True, dtype, embedding_axes,
            "embedding_attend",
        )  # fmt: skip
        if x.ndim < 1 or x.shape[-1] != table.shape[1]:
            path = js.get_variable_scope().name
            raise _checks.error(
                LayerArgumentError,
                "embedding_attend",
                f"needs inputs [..., {table.shape[1]}] to match the table "
                f"{path}/embeddings of shape {table.shape}, got shape {x.shape}. "
                "Project the inputs to the table's embed_dim first.",
            )
        x = x.astype(table.dtype)
        return lax.dot_general(
            x, table, (((x.ndim - 1,), (1,)), ((), ())), precision=precision
        )
