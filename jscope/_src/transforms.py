"""Lifted transforms: `scan`, `vmap`, `remat`, `cond` and `while_loop`.

Each is a short function over `lift.LiftedCall`, the one skeleton of every
lifted transform (see `jscope._src.lift` for how variables cross): validate
the arguments, `discover` the shared variables at init, wrap the body in
`run`, apply the JAX transform, `finish`. Imports: `errors`, `lift`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jscope import errors
from jscope._src.lift import Crossed, LiftedCall, check_same

# ------------------------------------------------------------------ arguments


def _check_axes(variable_axes: Any, what: str) -> dict[str, int]:
    """Validates ``variable_axes``: ``{collection: non-negative axis}``."""
    if variable_axes is None:
        return {}
    if not isinstance(variable_axes, Mapping):
        raise errors.LiftError(
            f"{what}: variable_axes must be a dict {{collection: axis}}, e.g. "
            f"{{'params': 0}}, got {type(variable_axes).__name__}: {variable_axes!r}."
        )
    out = {}
    for coll, axis in variable_axes.items():
        if not isinstance(coll, str):
            raise errors.LiftError(
                f"{what}: variable_axes keys are collection names (str), got {coll!r}."
            )
        if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
            raise errors.LiftError(
                f"{what}: variable_axes[{coll!r}] must be a non-negative int axis "
                f"(the axis the stacked variables gain), got {axis!r}."
            )
        out[coll] = axis
    return out


def _check_axis_name(axis_name: Any, what: str) -> str | None:
    """Validates ``axis_name``: a str or None."""
    if axis_name is not None and not isinstance(axis_name, str):
        raise errors.LiftError(
            f"{what}: axis_name must be a str (the logical name of the stacked "
            f"dimension, e.g. 'layers') or None, got {axis_name!r}."
        )
    return axis_name


def _check_split(split_rngs: Any, what: str) -> dict[str, bool]:
    """Validates ``split_rngs``: ``{stream: bool}``."""
    if split_rngs is None:
        return {}
    if not isinstance(split_rngs, Mapping) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in split_rngs.items()
    ):
        raise errors.LiftError(
            f"{what}: split_rngs must be a dict {{stream: bool}}, e.g. "
            f"{{'params': True, 'dropout': True}}, got {split_rngs!r}."
        )
    return dict(split_rngs)


# ----------------------------------------------------------------------- scan


def scan(
    fn: Callable[[Any, Any], tuple[Any, Any]],
    variable_axes: Mapping[str, int] | None = None,
    split_rngs: Mapping[str, bool] | None = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    in_axes: int = 0,
    out_axes: int = 0,
    axis_name: str | None = None,
) -> Callable[..., tuple[Any, Any]]:
    """`jax.lax.scan` over a function that uses jscope variables.

    Collections in ``variable_axes`` are **stacked**: each iteration has its own
    slice (a stack of identical layers, one compiled body). The others are
    **shared** by every iteration (an RNN cell over time, TF1's reuse); when
    such a collection is mutable in this `js.apply`, its updates are carried
    from one iteration to the next.

    Args:
      fn: ``fn(carry, x) -> (carry, y)``, as for `jax.lax.scan`.
      variable_axes: ``{collection: axis}`` of stacked collections.
      split_rngs: ``{stream: bool}``: streams whose `js.next_rng_key` keys differ
        per iteration. Stacked variables get per-iteration initial values unless
        ``split_rngs["params"]`` is False.
      length: Number of iterations (needed when ``xs`` is None).
      reverse: Scan from the end, as in `jax.lax.scan`.
      unroll: As in `jax.lax.scan`.
      in_axes: Axis of ``xs`` to scan over.
      out_axes: Axis of the stacked ``ys``.
      axis_name: The logical axis name of the dimension stacked variables gain
        (``"layers"``), for `js.ShardingRules`; None: not named (replicated
        unless a ``paths`` rule says otherwise).

    Returns:
      A function ``(carry, xs=None) -> (carry, ys)``.

    Raises:
      LiftError: A bad ``variable_axes`` or ``split_rngs``, or a body that creates
        different variables on different passes.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def block(h, _):
      ...     w = js.get_variable("w", (2, 2))
      ...     return jnp.tanh(h @ w), None
      >>> def stack(h):
      ...     return js.scan(block, variable_axes={"params": 0}, length=3)(h)[0]
      >>> v = js.init(stack, jax.random.key(0), jnp.ones((1, 2)))
      >>> v["params"]["w"].shape
      (3, 2, 2)
    """
    what = "js.scan"
    axes = _check_axes(variable_axes, what)
    split = _check_split(split_rngs, what)
    _check_axis_name(axis_name, what)

    def scanned(carry: Any, xs: Any = None) -> tuple[Any, Any]:
        call = LiftedCall(what, axes=axes, split=split, axis_name=axis_name)
        if in_axes != 0:
            xs = jax.tree.map(lambda a: jnp.moveaxis(a, in_axes, 0), xs)
        call.length = n = _length(xs, length, what)
        if call.initializing:
            x0 = jax.tree.map(lambda a: a[n - 1 if reverse else 0], xs)
            call.discover(fn, args=(carry, x0))

        def body(c, inp):
            (user_carry, carried), (x, i, sliced) = c, inp
            (user_carry, y), out = call.run(
                fn, user_carry, x, carried=carried, index=i, sliced=sliced
            )
            return (user_carry, out.carried), (y, out.created, out.updates)

        (carry, carried), (ys, created, updates) = lax.scan(
            body,
            (carry, call.carried()),
            (xs, jnp.arange(n), call.stacked()),
            length=n,
            reverse=reverse,
            unroll=unroll,
        )
        call.finish(Crossed(created, updates, carried))
        if out_axes != 0:
            ys = jax.tree.map(lambda a: jnp.moveaxis(a, 0, out_axes), ys)
        return carry, ys

    return scanned


def _length(xs: Any, length: int | None, what: str) -> int:
    leaves = jax.tree.leaves(xs)
    if length is not None:
        return length
    if not leaves:
        raise errors.LiftError(f"{what} needs length= when xs is None or empty.")
    return leaves[0].shape[0]


# ----------------------------------------------------------------------- vmap


def vmap(
    fn: Callable[..., Any],
    variable_axes: Mapping[str, int] | None = None,
    split_rngs: Mapping[str, bool] | None = None,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_size: int | None = None,
    axis_name: str | None = None,
) -> Callable[..., Any]:
    """`jax.vmap` over a function that uses jscope variables.

    Collections in ``variable_axes`` are **mapped**: each member of the batch has
    its own slice (an ensemble of models). The others are **shared** by every
    member and may not be assigned inside (their update would be batched).

    Args:
      fn: The function to map.
      variable_axes: ``{collection: axis}`` of mapped collections.
      split_rngs: ``{stream: bool}``: streams whose keys differ per member; mapped
        variables get per-member initial values unless ``split_rngs["params"]``
        is False.
      in_axes: As in `jax.vmap`.
      out_axes: As in `jax.vmap`.
      axis_size: The batch size, when no argument is mapped.
      axis_name: Names the mapped axis: passed to `jax.vmap` (for collectives
        such as `jax.lax.psum`), and the logical axis name of the dimension
        mapped variables gain, for `js.ShardingRules`.

    Returns:
      The mapped function.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def member(x):
      ...     return x @ js.get_variable("w", (2, 1))
      >>> def ensemble(x):
      ...     return js.vmap(member, {"params": 0}, in_axes=None, axis_size=4)(x)
      >>> v = js.init(ensemble, jax.random.key(0), jnp.ones((3, 2)))
      >>> v["params"]["w"].shape, js.apply(ensemble, v, jnp.ones((3, 2))).shape
      ((4, 2, 1), (4, 3, 1))
    """
    what = "js.vmap"
    axes = _check_axes(variable_axes, what)
    split = _check_split(split_rngs, what)
    _check_axis_name(axis_name, what)

    def mapped(*args: Any) -> Any:
        call = LiftedCall(
            what, axes=axes, split=split, carry_shared=False, axis_name=axis_name
        )
        arg_axes = (
            in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
        )
        call.length = n = _axis_size(args, arg_axes, axis_size, what)
        if call.initializing:
            first = [
                a
                if ax is None
                else jax.tree.map(lambda v, ax=ax: jnp.take(v, 0, ax), a)
                for a, ax in zip(args, arg_axes, strict=True)
            ]
            call.discover(fn, args=tuple(first), wrap=_named(axis_name))

        def body(i, sliced, *args):
            out, crossed = call.run(fn, *args, carried={}, index=i, sliced=sliced)
            return out, crossed.created, crossed.updates

        stacked = call.stacked(axis_zero=False)
        out, created, updates = jax.vmap(
            body,
            in_axes=(0, {c: axes[c] for c in stacked}, *arg_axes),
            out_axes=(out_axes, 0, 0),
            axis_size=n,
            axis_name=axis_name,
        )(jnp.arange(n), stacked, *args)
        call.finish(Crossed(created, updates, {}))
        return out

    return mapped


def _named(axis_name: str | None) -> Callable[..., Any] | None:
    """How the shape-only pass runs: in a size-1 `jax.vmap` named ``axis_name``.

    So collectives over ``axis_name`` in the body trace there too.
    """
    if axis_name is None:
        return None

    def wrap(probe: Callable[..., Any]) -> Callable[..., Any]:
        def one_member(*args: Any) -> Any:
            return jax.vmap(lambda: probe(*args), axis_size=1, axis_name=axis_name)()

        return one_member

    return wrap


def _axis_size(args, arg_axes, axis_size, what) -> int:
    if axis_size is not None:
        return axis_size
    for a, ax in zip(args, arg_axes, strict=True):
        if ax is not None:
            leaves = jax.tree.leaves(a)
            if leaves:
                return leaves[0].shape[ax]
    raise errors.LiftError(f"{what} needs axis_size= when no argument is mapped.")


# ---------------------------------------------------------------------- remat


def remat(
    fn: Callable[..., Any],
    prevent_cse: bool = True,
    policy: Callable[..., bool] | None = None,
) -> Callable[..., Any]:
    """`jax.checkpoint` over a function that uses jscope variables.

    The variables are inputs of the rematerialised computation: the same values
    and gradients, less memory kept for the backward pass.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> layer = js.remat(lambda x: jnp.sin(x @ js.get_variable("w", (2, 2))))
      >>> v = js.init(layer, jax.random.key(0), jnp.ones((1, 2)))
      >>> js.apply(layer, v, jnp.ones((1, 2))).shape
      (1, 2)
    """
    what = "js.remat"

    def rematted(*args: Any) -> Any:
        call = LiftedCall(what)
        if call.initializing:
            call.discover(fn, args=args)

        def body(carried, *args):
            out, crossed = call.run(fn, *args, carried=carried)
            return out, crossed.carried

        out, carried = jax.checkpoint(body, prevent_cse=prevent_cse, policy=policy)(
            call.carried(), *args
        )
        call.finish(Crossed({}, {}, carried))
        return out

    return rematted


# ------------------------------------------------------------ cond, while_loop


def cond(pred: Any, true_fn: Callable, false_fn: Callable, *operands: Any) -> Any:
    """`jax.lax.cond` whose branches use the same jscope variables.

    Both branches must create the same variables (each is traced; at init the
    variables are created once, outside). Mutable variables updated in a branch
    come out updated.

    Raises:
      LiftError: The branches create different variables.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f(x):
      ...     scale = lambda x: x * js.get_variable("s", initializer=2.0)
      ...     return js.cond(x > 0, scale, lambda x: -scale(x), x)
      >>> v = js.init(f, jax.random.key(0), 1.0)
      >>> float(js.apply(f, v, -3.0))
      6.0
    """
    what = "js.cond"
    call = LiftedCall(what)
    if call.initializing:
        call.discover(true_fn, false_fn, args=operands)

    def branch(f):
        def run(carried, *ops):
            out, crossed = call.run(f, *ops, carried=carried)
            return out, crossed.carried

        return run

    out, carried = lax.cond(
        pred, branch(true_fn), branch(false_fn), call.carried(), *operands
    )
    children = call.children
    first, second = children[-2:] if len(children) > 1 else children * 2
    check_same(what, call.outer.new_paths(first), call.outer.new_paths(second))
    call.finish(Crossed({}, {}, carried), child=first)
    return out


def while_loop(cond_fun: Callable, body_fun: Callable, init_val: Any) -> Any:
    """`jax.lax.while_loop` whose condition and body use jscope variables.

    Every iteration uses the same variables; the body may create them (once, as
    TF1's reuse), the condition may only read them. Mutable variables updated
    in the body are carried from one iteration to the next.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f(x):
      ...     step = lambda x: x + js.get_variable("step", initializer=1.0)
      ...     return js.while_loop(lambda x: x < 10.0, step, x)
      >>> v = js.init(f, jax.random.key(0), 0.0)
      >>> float(js.apply(f, v, 0.5))
      10.5
    """
    what = "js.while_loop"
    call = LiftedCall(what)
    if call.initializing:
        call.discover(body_fun, args=(init_val,))

    def cond_wrapper(c):
        val, carried = c
        return call.run(cond_fun, val, carried=carried, condition=True)[0]

    def body_wrapper(c):
        val, carried = c
        new, crossed = call.run(body_fun, val, carried=carried)
        return new, crossed.carried

    # Trace the body first so the condition can read what it creates.
    start = (init_val, call.carried())
    jax.eval_shape(body_wrapper, start)
    val, carried = lax.while_loop(cond_wrapper, body_wrapper, start)
    call.finish(Crossed({}, {}, carried))
    return val
