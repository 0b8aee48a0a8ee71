"""Checks of layer arguments and inputs shared by the layers; each message once.

Every error is a `jscope.errors.LayerArgumentError` (a ``ValueError``) or a
`jscope.errors.LayerTypeError` (a ``TypeError``) whose ``path`` is the layer's
variable scope and whose message reads ``Layer <path>: <layer> <what is wrong>,
got <found>. <how to fix it>``. Call these inside the layer's
`js.variable_scope`, so the path is the layer's own (``net/dense_1``). Public
API only, like the layers.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, TypeAlias, TypeVar

import jax

import jscope as js
from jscope.errors import LayerArgumentError, LayerTypeError

E = TypeVar("E", LayerArgumentError, LayerTypeError)

Padding: TypeAlias = str | Sequence[tuple[int, int]]
"""``"SAME"``, ``"VALID"`` (any case) or one ``(low, high)`` pair per spatial axis."""

SPATIAL = {1: "W", 2: "HW", 3: "DHW"}
"""The spatial axes of a channels-last layout, by their number."""

Axes: TypeAlias = Sequence[str | None]
"""Logical axis names of a variable, one per dimension (None: no name)."""

FEATURE_AXES: tuple[str | None, ...] = ("embed",)
"""The default logical axes of a normalization layer's variables (see `axes`)."""


def error(cls: type[E], layer: str, message: str) -> E:
    """``cls`` for the layer at the current scope: ``Layer <path>: <layer> ...``."""
    path = js.get_variable_scope().name
    return cls(f"Layer {path}: {layer} {message}", path)


def as_index(value: Any) -> int | None:
    """``value`` as an int (``operator.index``), or None; a bool is not an int."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def positive_int(value: Any, what: str, layer: str) -> int:
    """``value`` as an int >= 1 (a size: units, filters, heads, ...)."""
    index = as_index(value)
    if index is None:
        raise error(
            LayerTypeError,
            layer,
            f"{what} must be an int, got {value!r} of type {type(value).__name__}. "
            f"Pass a Python int, e.g. {what}=8.",
        )
    if index <= 0:
        raise error(
            LayerArgumentError,
            layer,
            f"{what} must be positive, got {index}. Pass an int >= 1.",
        )
    return index


def ints(
    value: Any, n: int, what: str, layer: str, minimum: int = 1
) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints, as a tuple of ``n`` ints >= minimum."""
    one = isinstance(value, int) and not isinstance(value, bool)
    items: Any = (value,) * n if one else value
    try:
        out = tuple(operator.index(v) for v in items)
    except TypeError:
        raise error(
            LayerTypeError,
            layer,
            f"{what} must be an int or a sequence of {n} ints, got {value!r}. "
            f"Pass e.g. {what}=2 or {what}={(2,) * n}.",
        ) from None
    if len(out) != n or any(v < minimum for v in out):
        raise error(
            LayerArgumentError,
            layer,
            f"{what} must be an int >= {minimum} or {n} such ints (one per spatial "
            f"axis), got {value!r}. Pass e.g. {what}={(minimum + 1,) * n}.",
        )
    return out


def padding(
    value: Any, n: int, layer: str, causal: bool = False
) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``, ``"VALID"`` (``"CAUSAL"`` if allowed) or ``n`` (low, high) pairs."""
    allowed = '"SAME", "VALID"' + (', "CAUSAL"' if causal else "")
    if isinstance(value, str):
        upper = value.upper()
        if upper in ("SAME", "VALID") or (causal and upper == "CAUSAL"):
            return upper
        raise error(
            LayerArgumentError,
            layer,
            f"got unknown padding {value!r}. Use {allowed} (any case) or a "
            f"sequence of {n} (low, high) pairs.",
        )
    try:
        pairs = tuple((operator.index(lo), operator.index(hi)) for lo, hi in value)
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or len(pairs) != n or any(p < 0 for pair in pairs for p in pair):
        raise error(
            LayerArgumentError,
            layer,
            f"padding must be {allowed} or a sequence of {n} (low, high) pairs of "
            f"non-negative ints, one per spatial axis; got {value!r}. Pass e.g. "
            f"padding={((1, 1),) * n}.",
        )
    return pairs


def rank(x: jax.Array, layer: str, expected: str, layout: str) -> None:
    """Raises unless ``x.ndim`` is in ``expected`` (``">= 1"``, ``"4"``, ...)."""
    if expected.startswith(">="):
        ok = x.ndim >= int(expected[2:])
    else:
        ok = str(x.ndim) in expected.replace(",", " ").split()
    if not ok:
        raise error(
            LayerArgumentError,
            layer,
            f"needs inputs of rank {expected} ({layout}), got shape "
            f"{tuple(x.shape)} of rank {x.ndim}. Reshape the inputs to that "
            "layout.",
        )


def spatial_layout(n: int) -> str:
    """``"NHWC, channels last"`` for ``n = 2``, and so on."""
    return f"N{SPATIAL[n]}C, channels last"


def rate(value: float, what: str, layer: str) -> float:
    """A drop probability in ``[0, 1)``."""
    if not 0.0 <= value < 1.0:
        raise error(
            LayerArgumentError,
            layer,
            f"{what} must be in [0, 1), got {value}. Pass the probability of "
            "dropping an element: 0 keeps everything, 1 is not allowed.",
        )
    return value


def axes(
    value: Any,
    shape: Sequence[int],
    *,
    variable: str,
    what: str,
    layer: str,
    default: Axes,
) -> tuple[str | None, ...] | None:
    """``value`` as a tuple of logical axis names for ``variable`` of ``shape``.

    None stays None (no names). Otherwise one name, a str or None, per
    dimension of the variable. `FEATURE_AXES` itself (the norms' default) names
    the last dimension and leaves the others unnamed, ``(None, ..., "embed")``,
    whatever the number of normalized axes; an equal tuple passed by the caller
    must fit the rank like any other. ``default`` is the layer's default for the
    variable, shown in the message as an example.
    """
    if value is None:
        return None
    if value is FEATURE_AXES:
        return _fitted(value, len(shape))
    path = f"{js.get_variable_scope().name}/{variable}"
    fix = f"e.g. {what}={_fitted(default, len(shape))!r}, or {what}=None for no names."
    names = _names(value)
    if names is None:
        raise error(
            LayerTypeError,
            layer,
            f"{what} must be a tuple of logical axis names (str or None), one per "
            f"dimension of {path} of shape {tuple(shape)}, got {value!r}. Pass "
            f"{fix}",
        )
    if len(names) != len(shape):
        raise error(
            LayerArgumentError,
            layer,
            f"{what} must name each of the {len(shape)} dimensions of {path} of "
            f"shape {tuple(shape)}, got {names!r}. Pass one name (str or None) "
            f"per dimension, {fix}",
        )
    return names


def _fitted(default: Axes, rank: int) -> tuple[str | None, ...]:
    """`FEATURE_AXES` fitted to ``rank`` dimensions; another default as it is."""
    if default is FEATURE_AXES:
        return (None,) * (rank - 1) + FEATURE_AXES
    return tuple(default)


def _names(value: Any) -> tuple[str | None, ...] | None:
    """``value`` as a tuple of str-or-None; None if it is not such a sequence."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return None
    names = tuple(value)
    if not all(n is None or isinstance(n, str) for n in names):
        return None
    return names


# ------------------------------------------------------------- TF1 arguments

_DATA_FORMATS = ("channels_last", "channels_first")


def channels_first(value: Any, layer: str) -> bool:
    """Whether ``data_format`` is ``"channels_first"`` (TF1's two, any case)."""
    fmt = value.lower() if isinstance(value, str) else value
    if fmt not in _DATA_FORMATS:
        raise error(
            LayerArgumentError,
            layer,
            f"got unknown data_format {value!r}. Pass 'channels_last' (batch, "
            "spatial axes, channels; the default) or 'channels_first' (batch, "
            "channels, spatial axes).",
        )
    return fmt == "channels_first"


def to_channels_last(x: jax.Array, first: bool) -> jax.Array:
    """``x`` with its channels (axis 1 when ``first``) moved last."""
    return jax.numpy.moveaxis(x, 1, -1) if first else x


def to_channels_first(y: jax.Array, first: bool) -> jax.Array:
    """``y``'s last axis moved to axis 1 when ``first`` (the inverse)."""
    return jax.numpy.moveaxis(y, -1, 1) if first else y


def layout(n: int, first: bool) -> str:
    """``"NHWC, channels last"`` or ``"NCHW, channels first"`` for ``n = 2``."""
    if first:
        return f"NC{SPATIAL[n]}, channels first"
    return spatial_layout(n)


_HOW = {
    "activity_regularizer": (
        "jscope registers regularizers of variables only. Drop it and add the "
        "penalty to the loss: loss += activity_regularizer(outputs)."
    ),
    "constraint": (
        "a constraint projects a variable after each optimizer step, which a "
        "layer cannot do in a pure function. Drop it and project the updated "
        "params yourself after the optimizer step (e.g. with jax.tree.map)."
    ),
}


def unsupported(layer: str, **arguments: Any) -> None:
    """Raises for the first of TF1's ``arguments`` given that jscope lacks.

    Each value is None when not given; the message names the argument and says
    what to do instead.
    """
    for name, value in arguments.items():
        if value is None:
            continue
        how = _HOW["constraint" if name.endswith("constraint") else name]
        raise error(
            LayerTypeError,
            layer,
            f"does not support {name} (got {value!r:.60}): {how}",
        )


def not_data_format(value: Any, what: str, layer: str) -> None:
    """Raises if ``value``, at ``what``'s position, is a data format string.

    TF1's convolutions took ``data_format`` right after ``padding``; jscope's
    take other arguments there, so a TF1 positional call lands it in ``what``.
    """
    if isinstance(value, str) and value.lower() in _DATA_FORMATS:
        raise error(
            LayerTypeError,
            layer,
            f"got {value!r} as {what}: TF1 took data_format at this position, "
            f"jscope's {layer} takes {what} there. Pass data_format={value!r} by "
            "keyword.",
        )
