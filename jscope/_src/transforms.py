"""Lifted transforms: `scan`, `vmap`, `remat`, `cond` and `while_loop`.

Plain JAX transforms cannot create jscope variables in their bodies: the body
runs under a trace of its own, so a value made there cannot leave it. Each lifted
transform here runs its body in a *child frame*, a copy of the run's rule state
(existing paths, names, counters) that knows how variables cross the transform:

- **shared** collections have one copy used by every iteration (or branch). At
  init a first, shape-only pass (`jax.eval_shape`) finds the shared variables
  the body creates; they are then created once, outside the transform, and the
  body reads them. Mutable shared variables are carried from one iteration to
  the next.
- **stacked** collections (``variable_axes={"params": 0}``) get one slice per
  iteration: at init the body creates them with per-iteration keys and the
  transform stacks them; at apply the body reads its slice.

After the transform, the child's rule state becomes the run's, exactly as if the
body had run once: the same names, the same reuse checks, the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jscope import errors
from jscope._src import context
from jscope._src.rng import path_key

_MISSING = object()


# ------------------------------------------------------------------ arguments


def _check_axes(variable_axes: Any, what: str) -> dict[str, int]:
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


def _check_split(split_rngs: Any, what: str) -> dict[str, bool]:
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


# ------------------------------------------------------------------ the lift


class _Lift:
    """How variables cross one lifted transform; lives in a child frame."""

    __slots__ = (
        "what",
        "axes",
        "split",
        "index",
        "length",
        "discover",
        "specs",
        "shared",
        "stacked",
        "parent",
        "no_create",
        "initial",
        "makes",
    )

    def __init__(self, what, axes, split, index, length, discover, shared, parent):
        self.what = what
        self.axes = axes
        self.split = split
        self.index = index
        self.length = length
        self.discover = discover
        self.specs: dict[str, tuple] = {}
        self.shared = shared
        self.stacked: dict[str, str] = {}
        self.parent = parent
        self.no_create = False
        self.initial: dict[str, Any] = {}  # stacked: value when created
        self.makes: dict[str, tuple] = {}  # stacked: (make, keyed)

    def fold_param_key(self, key, coll):
        if key is not None and coll in self.axes and self.split.get("params", True):
            key = jax.random.fold_in(key, self.index)
        if self.parent is not None:
            key = self.parent.fold_param_key(key, coll)
        return key

    def fold_rng(self, key, stream):
        if self.split.get(stream, False):
            key = jax.random.fold_in(key, self.index)
        if self.parent is not None:
            key = self.parent.fold_rng(key, stream)
        return key

    def create(self, frame, path, coll, make, keyed):
        """Makes the initial value of a variable created in the body."""
        if self.no_create:
            raise errors.LiftError(
                f"Variable {path} is created in the condition of {self.what}; the "
                "condition may read variables but not create them. Create it "
                "before the loop or in its body.",
                path,
            )
        key = path_key(frame.rng, path) if keyed else None
        if coll in self.axes:
            value = make(self.fold_param_key(key, coll))
            self.stacked[path] = coll
            self.initial[path] = value
            self.makes[path] = (make, keyed)
            return value
        if self.discover:
            self.specs[path] = (coll, make, keyed)
            return make(key)
        value = self.shared.get(path, _MISSING)
        if value is _MISSING:
            raise errors.LiftError(
                f"Variable {path} is created by the body of {self.what} on one pass "
                "but not on its first, shape-only pass: the body must create the "
                "same variables every time it runs. Make variable creation "
                "independent of the iteration (no Python state that changes "
                "between calls).",
                path,
            )
        return value


class _View(Mapping):
    """One collection of the tree as the body sees it at apply."""

    __slots__ = ("_flat", "_get")

    def __init__(self, flat, get):
        self._flat = flat
        self._get = get

    def get(self, path, default=None):
        if path not in self._flat:
            return default
        return self._get(path, self._flat[path])

    def __getitem__(self, path):
        if path not in self._flat:
            raise KeyError(path)
        return self._get(path, self._flat[path])

    def __contains__(self, path):
        return path in self._flat

    def __iter__(self):
        return iter(self._flat)

    def __len__(self):
        return len(self._flat)


def _source_view(source, lift, carried):
    if source is None:
        return None
    view = {}
    for coll, flat in source.items():
        axis = lift.axes.get(coll)
        if axis is not None:
            view[coll] = _View(flat, _slicer(lift, axis))
        elif carried:
            view[coll] = _View(flat, lambda p, v: carried.get(p, v))
        else:
            view[coll] = flat
    return view


def _slicer(lift, axis):
    def get(path, value):
        if value.ndim <= axis or value.shape[axis] != lift.length:
            raise errors.ShapeMismatchError(
                f"Variable {path} is stacked by {lift.what} along axis {axis}, so "
                f"its axis {axis} must have size {lift.length}; found shape "
                f"{tuple(value.shape)}. Check variable_axes and the length.",
                path,
            )
        return lax.dynamic_index_in_dim(value, lift.index, axis, keepdims=False)

    return get


def _fork(outer: context.Frame, lift: _Lift, carried: dict) -> context.Frame:
    child = context.Frame.__new__(context.Frame)
    child.is_run = True
    child.initializing = outer.initializing
    child.alive = True
    child.rng = outer.rng
    child.rngs = outer.rngs
    child.source = _source_view(outer.source, lift, carried)
    child.mutable = outer.mutable
    child.scope = outer.scope
    child.name_scope = outer.name_scope
    child.names = outer.names.copy()
    child.counts = outer.counts.copy()
    child.kinds = dict(outer.kinds)
    child.values = {**outer.values, **carried}
    child.collection_of = dict(outer.collection_of)
    child.created = {}
    child.inner = set(outer.inner)
    child.assigned = {}
    child.returned = {}
    child.regularizers = []
    child.rng_counts = dict(outer.rng_counts)
    child.templates = dict(outer.templates)
    child.trace_state = context.trace_state()
    child.lift = lift
    return child


def _run_in(child: context.Frame, fn: Callable, *args: Any) -> Any:
    token = context.enter(child)
    try:
        return fn(*args)
    finally:
        context.leave(token)


def _detach(child: context.Frame) -> None:
    """Drops the traced values of a body's frame, keeping its rule state.

    The frame outlives the body's trace (`_merge` reads its rule state), so it
    must not keep the trace's values: no tracer may leak out of a run.
    """
    child.assigned = dict.fromkeys(child.assigned)
    child.values = {}
    child.source = None
    child.returned = {}
    child.created = {}
    child.rng = child.rngs = None
    child.lift = None
    child.trace_state = None
    child.alive = False


def _new_paths(outer: context.Frame, child: context.Frame) -> list[str]:
    return [p for p in child.kinds if p not in outer.kinds]


def _carried(outer: context.Frame, axes: dict[str, int]) -> dict[str, Any]:
    """Current values of the mutable, unstacked variables the body may update."""
    if outer.initializing:
        return {}  # assignments at init are not kept; nothing to carry
    mutable = outer.mutable
    out = {}
    for coll, flat in outer.source.items():
        if coll in axes or not (mutable is True or coll in mutable):
            continue
        for path, value in flat.items():
            out[path] = outer.values.get(path, value)
    return out


def _discover(outer, what, axes, split, fn, *args) -> tuple[dict, list[str]]:
    """Runs ``fn`` shape-only to find the shared variables it creates."""
    lift = _Lift(what, axes, split, 0, None, True, {}, outer.lift)
    found: list[str] = []

    def probe(*args):
        child = _fork(outer, lift, {})
        _run_in(child, fn, *args)
        found[:] = _new_paths(outer, child)
        _detach(child)
        lift.initial = {}  # traced values of this probe
        return 0

    jax.eval_shape(probe, *args)
    return lift.specs, found


def _materialize(outer: context.Frame, specs: dict) -> dict[str, Any]:
    """Creates the shared variables found by `_discover`, outside the transform."""
    out = {}
    for path, (coll, make, keyed) in specs.items():
        if outer.lift is None:
            out[path] = make(path_key(outer.rng, path) if keyed else None)
        else:
            out[path] = outer.lift.create(outer, path, coll, make, keyed)
    return out


def _check_same(what: str, first: list[str], second: list[str]) -> None:
    if sorted(first) != sorted(second):
        only1 = sorted(set(first) - set(second))
        only2 = sorted(set(second) - set(first))
        raise errors.LiftError(
            f"The body of {what} creates different variables on different passes "
            f"(only on one: {only1 or '-'}; only on the other: {only2 or '-'}). "
            "Every iteration or branch must create the same variables.",
            (only1 or only2)[0],
        )


def _merge(outer, child, axes, created, stacked_updates, carried, shared, nested=None):
    """Makes the child's rule state the run's, with the transform's results.

    Args:
      outer: The run's frame.
      child: The frame the body ran in (its last trace).
      axes: Stacked collections and their axes.
      created: At init, stacked initial values, stacked on axis 0.
      stacked_updates: Assigned stacked variables, stacked on axis 0.
      carried: Final values of the carried (mutable, shared) variables.
      shared: At init, the shared variables created outside the transform.
      nested: At init, ``(makes, length, split_params)`` of the body's stacked
        variables, for an enclosing transform that shares their collection.
    """
    outer.counts.assign_from(child.counts)
    outer.names = child.names
    outer.inner = child.inner
    outer.rng_counts = child.rng_counts
    outer.templates = child.templates
    for path in _new_paths(outer, child):
        coll = child.collection_of[path]
        if not outer.initializing:
            value = outer.source[coll][path]
        elif path in created:
            value = jnp.moveaxis(created[path], 0, axes[coll])
            if outer.lift is not None:
                value = _adopt(outer, path, coll, value, axes[coll], nested)
        else:
            value = shared[path]
        if outer.initializing:
            outer.created[path] = (coll, value)
        outer.values[path] = value
        outer.kinds[path] = child.kinds[path]
        outer.collection_of[path] = coll
    for path, reg in child.regularizers:
        axis = axes.get(child.collection_of[path])
        if axis is not None:
            reg = _stacked_regularizer(reg, axis)
        outer.regularizers.append((path, reg))
    updates = {
        p: jnp.moveaxis(v, 0, axes[child.collection_of[p]])
        for p, v in stacked_updates.items()
    }
    outer.values.update(carried)
    updates.update((p, v) for p, v in carried.items() if p in child.assigned)
    for path, value in updates.items():
        outer.values[path] = value
        if not outer.initializing:
            outer.assigned[path] = value


def _adopt(outer, path, coll, value, axis, nested):
    """Hands a variable stacked by a nested transform to the enclosing one.

    Returns the value the enclosing body sees: the nested stack itself when the
    enclosing transform stacks the collection again; when it shares it, the
    stack is created once outside the enclosing transform (found by its
    shape-only pass), from the same keys the nested transform used.
    """
    lift = outer.lift
    if coll in lift.axes:  # stacked again by the enclosing transform
        lift.stacked[path] = coll
        lift.initial[path] = value
        return value
    if lift.discover:
        makes, length, split = nested
        make, keyed = makes[path]

        def make_stack(key):
            keys = [
                (jax.random.fold_in(key, i) if split else key) if keyed else None
                for i in range(length)
            ]
            return jnp.moveaxis(jnp.stack([make(k) for k in keys]), 0, axis)

        lift.specs[path] = (coll, make_stack, keyed)
        return value
    return lift.create(outer, path, coll, None, False)


def _stacked_regularizer(reg, axis):
    def stacked(value):
        return jnp.sum(jax.vmap(reg, in_axes=axis)(value))

    return stacked


def _body_results(child, lift, carried, axes):
    created = dict(lift.initial) if child.initializing else {}
    stacked_updates = {
        p: child.values[p]
        for p in child.assigned
        if child.collection_of[p] in axes and p not in carried
    }
    carried_out = {p: child.values[p] for p in carried}
    return created, stacked_updates, carried_out


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

    def scanned(carry: Any, xs: Any = None) -> tuple[Any, Any]:
        outer = context.current_run(what)
        if in_axes != 0:
            xs = jax.tree.map(lambda a: jnp.moveaxis(a, in_axes, 0), xs)
        n = _length(xs, length, what)
        shared: dict[str, Any] = {}
        found: list[str] = []
        if outer.initializing:
            x0 = jax.tree.map(lambda a: a[n - 1 if reverse else 0], xs)
            specs, found = _discover(outer, what, axes, split, fn, carry, x0)
            shared = _materialize(outer, specs)
        carried0 = _carried(outer, axes)
        last: dict[str, Any] = {}

        def body(c, inp):
            user_carry, carried = c
            x, i = inp
            lift = _Lift(what, axes, split, i, n, False, shared, outer.lift)
            child = _fork(outer, lift, carried)
            new_carry, y = _run_in(child, fn, user_carry, x)
            last["child"] = child
            last["makes"] = dict(lift.makes)
            created, updates, carried_out = _body_results(child, lift, carried, axes)
            _detach(child)
            return (new_carry, carried_out), (y, created, updates)

        (carry, carried), (ys, created, updates) = lax.scan(
            body,
            (carry, carried0),
            (xs, jnp.arange(n)),
            length=n,
            reverse=reverse,
            unroll=unroll,
        )
        child = last["child"]
        if outer.initializing:
            _check_same(what, found, _new_paths(outer, child))
        nested = (last["makes"], n, split.get("params", True))
        _merge(outer, child, axes, created, updates, carried, shared, nested)
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

    def mapped(*args: Any) -> Any:
        outer = context.current_run(what)
        arg_axes = (
            in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
        )
        n = _axis_size(args, arg_axes, axis_size, what)
        shared: dict[str, Any] = {}
        found: list[str] = []
        if outer.initializing:
            first = [
                a
                if ax is None
                else jax.tree.map(lambda v, ax=ax: jnp.take(v, 0, ax), a)
                for a, ax in zip(args, arg_axes, strict=True)
            ]
            specs, found = _discover(outer, what, axes, split, fn, *first)
            shared = _materialize(outer, specs)
        last: dict[str, Any] = {}

        def body(i, *args):
            lift = _Lift(what, axes, split, i, n, False, shared, outer.lift)
            child = _fork(outer, lift, {})
            out = _run_in(child, fn, *args)
            last["child"] = child
            for path in child.assigned:
                if child.collection_of[path] not in axes:
                    raise errors.LiftError(
                        f"Variable {path} is assigned inside js.vmap, but its "
                        f"collection {child.collection_of[path]!r} is shared by every "
                        "member, so the update would differ per member. Map the "
                        "collection with variable_axes, or assign outside.",
                        path,
                    )
            last["makes"] = dict(lift.makes)
            created, updates, _ = _body_results(child, lift, {}, axes)
            _detach(child)
            return out, created, updates

        out, created, updates = jax.vmap(
            body, in_axes=(0, *arg_axes), out_axes=(out_axes, 0, 0), axis_size=n
        )(jnp.arange(n), *args)
        child = last["child"]
        if outer.initializing:
            _check_same(what, found, _new_paths(outer, child))
        nested = (last["makes"], n, split.get("params", True))
        _merge(outer, child, axes, created, updates, {}, shared, nested)
        return out

    return mapped


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
        outer = context.current_run(what)
        shared: dict[str, Any] = {}
        found: list[str] = []
        if outer.initializing:
            specs, found = _discover(outer, what, {}, {}, fn, *args)
            shared = _materialize(outer, specs)
        carried0 = _carried(outer, {})
        last: dict[str, Any] = {}

        def body(carried, *args):
            lift = _Lift(what, {}, {}, None, None, False, shared, outer.lift)
            child = _fork(outer, lift, carried)
            out = _run_in(child, fn, *args)
            last["child"] = child
            carried_out = {p: child.values[p] for p in carried}
            _detach(child)
            return out, carried_out

        out, carried = jax.checkpoint(body, prevent_cse=prevent_cse, policy=policy)(
            carried0, *args
        )
        child = last["child"]
        if outer.initializing:
            _check_same(what, found, _new_paths(outer, child))
        _merge(outer, child, {}, {}, {}, carried, shared)
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
    outer = context.current_run(what)
    shared: dict[str, Any] = {}
    if outer.initializing:
        specs_t, found_t = _discover(outer, what, {}, {}, true_fn, *operands)
        specs_f, found_f = _discover(outer, what, {}, {}, false_fn, *operands)
        _check_same(what, found_t, found_f)
        shared = _materialize(outer, {**specs_f, **specs_t})
    carried0 = _carried(outer, {})
    children: list[context.Frame] = []

    def branch(f):
        def run(carried, *ops):
            lift = _Lift(what, {}, {}, None, None, False, shared, outer.lift)
            child = _fork(outer, lift, carried)
            out = _run_in(child, f, *ops)
            children.append(child)
            carried_out = {p: child.values[p] for p in carried}
            _detach(child)
            return out, carried_out

        return run

    out, carried = lax.cond(
        pred, branch(true_fn), branch(false_fn), carried0, *operands
    )
    first, second = children[-2:] if len(children) > 1 else children * 2
    _check_same(what, _new_paths(outer, first), _new_paths(outer, second))
    _merge(outer, first, {}, {}, {}, carried, shared)
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
    outer = context.current_run(what)
    shared: dict[str, Any] = {}
    found: list[str] = []
    if outer.initializing:
        specs, found = _discover(outer, what, {}, {}, body_fun, init_val)
        shared = _materialize(outer, specs)
    carried0 = _carried(outer, {})
    last: dict[str, Any] = {}
    body_paths: list[str] = []

    def cond_wrapper(c):
        val, carried = c
        lift = _Lift(what, {}, {}, None, None, False, shared, outer.lift)
        lift.no_create = True
        child = _fork(outer, lift, carried)
        base = last.get("child")
        if base is not None:  # see the variables the body creates
            for path in _new_paths(outer, base):
                coll = base.collection_of[path]
                child.kinds[path] = base.kinds[path]
                child.collection_of[path] = coll
                if path in carried:
                    child.values[path] = carried[path]
                elif outer.initializing:
                    child.values[path] = shared[path]
                else:
                    child.values[path] = outer.source[coll][path]
        out = _run_in(child, cond_fun, val)
        _detach(child)
        return out

    def body_wrapper(c):
        val, carried = c
        lift = _Lift(what, {}, {}, None, None, False, shared, outer.lift)
        child = _fork(outer, lift, carried)
        new = _run_in(child, body_fun, val)
        last["child"] = child
        body_paths[:] = _new_paths(outer, child)
        carried_out = {p: child.values[p] for p in carried}
        _detach(child)
        return new, carried_out

    # Trace the body first so the condition can read what it creates.
    jax.eval_shape(body_wrapper, (init_val, carried0))
    val, carried = lax.while_loop(cond_wrapper, body_wrapper, (init_val, carried0))
    child = last["child"]
    if outer.initializing:
        _check_same(what, found, body_paths)
    _merge(outer, child, {}, {}, {}, carried, shared)
    return val
