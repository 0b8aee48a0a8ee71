"""Every use of JAX internals in jscope, each with its fallback.

jscope needs five things that JAX's public API does not offer: the x64 flag
at one attribute read (dtype canonicalization is cached under it), the identity
of the current trace (to tell a run's own trace from a plain JAX transform
opened inside it), whether a trace stages a jaxpr (whose function JAX caches),
the fold-in primitive without its argument checks (the init-trace hot path),
and the unrolled threefry lowering on CPU (the sharded init's memory). Each is
reached here and nowhere else, with a public fallback for JAX versions that
move them. Imports: JAX and NumPy only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # The trace object itself: an identity check is the cheapest comparison.
    from jax._src.core import trace_ctx as _trace_ctx

    def trace_state() -> Any:
        """The current JAX trace, compared by identity or equality."""
        return _trace_ctx.trace

except ImportError:  # pragma: no cover - other jax versions
    # jax.extend is imported only here: it pulls in Pallas, a tenth of a second.
    try:  # jax >= 0.7
        from jax.extend.core import get_opaque_trace_state as _opaque_trace_state

        def trace_state() -> Any:
            """The current JAX trace, compared by identity or equality."""
            return _opaque_trace_state()

    except ImportError:  # older jax
        from jax import core as _jax_core

        def trace_state() -> Any:
            """The current JAX trace, compared by identity or equality."""
            return _jax_core.get_opaque_trace_state(None)


class _NoTrace:
    """A type no trace has: where JAX's eager trace is not found, no plans."""


#: The type of the trace outside any transform (eager): where an apply's plan
#: can match (`plans`); each jit or vmap trace is a new object.
EVAL_TRACE: type = type(trace_state())
if "EvalTrace" not in EVAL_TRACE.__name__:  # pragma: no cover - other jax versions
    EVAL_TRACE = _NoTrace


class _TraceRef:
    """``TRACE_REF.value`` is `trace_state()` where JAX's holder is not found."""

    __slots__ = ()

    @property
    def value(self) -> Any:
        return trace_state()


try:  # JAX's holder of the current trace: one attribute read (a hot path).
    from jax._src.core import trace_state_strong_ref as TRACE_REF

    if TRACE_REF.value is not trace_state():  # pragma: no cover - other jax
        raise ImportError("trace_state_strong_ref is not the current trace")
except (ImportError, AttributeError):  # pragma: no cover - other jax versions
    TRACE_REF = _TraceRef()


class _X64Flag:
    """``X64.value``: ``jax.config.jax_enable_x64``, where JAX's holder is not found."""

    __slots__ = ()

    @property
    def value(self) -> bool:
        return bool(jax.config.jax_enable_x64)  # pyright: ignore[reportAttributeAccessIssue]


try:  # JAX's x64 flag: ``value`` is this thread's setting, context managers too.
    from jax._src.config import enable_x64 as X64

    if not isinstance(X64.value, bool):  # pragma: no cover - other jax
        raise ImportError("enable_x64.value is not the flag")
except (ImportError, AttributeError):  # pragma: no cover - other jax versions
    X64 = _X64Flag()


class _NoArray:
    """A type no value has: where JAX's array type is not found, the generic path."""


try:  # The concrete jax.Array type: its ``aval`` (shape, dtype) is a plain attribute.
    from jax._src.array import ArrayImpl as _ArrayImpl

    ARRAY_IMPL: type = _ArrayImpl
except ImportError:  # pragma: no cover - other jax versions
    ARRAY_IMPL = _NoArray


try:  # The primitive under jax.random.fold_in, without its argument checks.
    from jax._src.random import prng as _prng

    _raw_fold_in = _prng.random_fold_in
except (ImportError, AttributeError):  # pragma: no cover - other jax versions
    _raw_fold_in = None


def same_trace(a: Any, b: Any) -> bool:
    """Whether two values of `trace_state` denote the same JAX trace."""
    return a is b or a == b


def is_staged_trace_of_its_own(run_state: Any) -> bool:
    """Whether the current trace is a staging (jaxpr) trace other than the run's.

    Such traces (``jax.jit``, ``jax.checkpoint``, ``jax.lax.scan``, ...) are cached
    by JAX. Batching and differentiation traces are not, and return False. JAX
    names no public predicate for this: the trace's class name tells.
    """
    trace = trace_state()
    ref = getattr(trace, "_trace_ref", None)  # an opaque state wraps a weakref
    if callable(ref):
        trace = ref()
    if trace is None or same_trace(trace, run_state):
        return False
    return "Jaxpr" in type(trace).__name__


def fold_in(key: jax.Array, data: int) -> jax.Array:
    """`jax.random.fold_in` of a 32-bit ``data``, faster for typed keys.

    For a new-style typed key (``jax.random.key``) this binds the fold-in
    primitive directly, which traces about 3x faster than `jax.random.fold_in`
    and gives the same key; other keys go through `jax.random.fold_in`.

    Example:
      >>> import jax
      >>> key = jax.random.key(0)
      >>> bool((jax.random.key_data(fold_in(key, 7))
      ...       == jax.random.key_data(jax.random.fold_in(key, 7))).all())
      True
    """
    if (
        _raw_fold_in is not None
        and isinstance(key, jax.Array)
        and key.ndim == 0
        and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        return _raw_fold_in(key, np.uint32(data))
    return jax.random.fold_in(key, data)


def distributed_client() -> Any:
    """`jax.distributed`'s coordination client (key-value store), or None."""
    try:
        from jax._src import distributed  # noqa: PLC0415
    except ImportError:  # pragma: no cover - other jax versions
        return None
    return distributed.global_state.client


def unrolled_threefry_lowering() -> dict[str, Any]:
    """Keywords for ``Traced.lower`` that lower threefry unrolled, on CPU too.

    JAX's CPU lowering of the threefry hash is a rolled loop (for compile
    time) whose carried buffers are program temporaries the size of each
    random draw; unrolled, as on GPU and TPU, it fuses into the op that
    consumes the bits. The bits are the same. `js.init(rules=...)` lowers its
    program with these so a sharded init holds no more than its variables'
    shards. The rule is an override of that one lowering (JAX's lowering
    parameters, part of its lowering cache key), not a change to JAX's global
    rule table: lowerings in other threads keep JAX's rules. Empty (JAX's
    own lowering) where JAX's internals differ.
    """
    global _UNROLLED
    if _UNROLLED is None:
        try:
            from jax._src.interpreters import mlir  # noqa: PLC0415

            try:  # jax >= 0.10
                from jax._src.random import threefry2x32  # noqa: PLC0415
            except ImportError:  # jax 0.9: the rule lives in jax._src.prng
                from jax._src import (  # noqa: PLC0415
                    prng as threefry2x32,  # pyright: ignore[reportAttributeAccessIssue]
                )

            rule = threefry2x32._threefry2x32_lowering_rule
            params = mlir.LoweringParameters(
                override_lowering_rules=((threefry2x32.threefry2x32_p, rule),)
            )
            _UNROLLED = {"_private_parameters": params}
        except (ImportError, AttributeError, TypeError):  # other jax
            _UNROLLED = {}
    return _UNROLLED


_UNROLLED: dict[str, Any] | None = None


def eager() -> bool:
    """Whether no JAX transform is tracing: arrays are concrete here."""
    trace = trace_state()
    ref = getattr(trace, "_trace_ref", None)  # an opaque state wraps a weakref
    if callable(ref):
        trace = ref()
    return trace is not None and type(trace).__name__ == "EvalTrace"
