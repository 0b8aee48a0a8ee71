"""The building block of every lifted transform: how variables cross one.

Plain JAX transforms cannot create jscope variables in their bodies: the body
runs under a trace of its own, so a value made there cannot leave it. A lifted
transform runs its body in a *child frame* (`Frame.fork`), a copy of the run's
rule state, whose ``lift`` (a `Lift`) knows how variables cross:

- **shared** collections have one copy used by every pass (iteration, member,
  branch). At init a shape-only pass (`jax.eval_shape`) finds the shared
  variables the body creates; they are then created once, outside the
  transform, and the body reads them. Mutable shared variables are carried
  from one pass to the next (or, for `js.vmap`, may not be assigned).
- **stacked** collections (``variable_axes={"params": 0}``) get one slice per
  pass: at init the body creates them with per-pass keys and the transform
  stacks them; at apply the transform hands the body its slices as per-pass
  inputs (`LiftedCall.stacked`: `jax.lax.scan`'s ``xs``, `jax.vmap`'s mapped
  arguments), so their gradients leave as per-pass outputs too.

`LiftedCall` is one call of a lifted transform, the skeleton they all share:
`discover` the shared variables, `run` the body in a forked child (entered,
then detached), `finish` by adopting the child's rule state and setting the
values the transform returned: the run's rule state is then exactly as if the
body had run once (Flax core's `pack`, Haiku's `temporary_internal_state`).

Imports: `errors`, `context`, `rng` (`path_key`). Not a hot path: this runs
once per trace of a body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jscope import errors
from jscope._src import context
from jscope._src.rng import path_key

_MISSING = object()


# ------------------------------------------------------------------ Lift


class Lift:
    """How variables cross one pass of a lifted body: a `context.Crossing`.

    Args:
      what: The transform's public name, for messages (``"js.scan"``).
      axes: ``{collection: axis}`` of the stacked collections.
      split: ``{stream: bool}``: streams whose keys differ per pass.
      index: The pass's index (a tracer), or None when passes are not counted.
      length: The number of passes, or None.
      shared: The shared variables created outside the transform, by path.
      parent: The enclosing transform's lift, or None.
      discovering: This is the shape-only pass that finds shared variables.
      may_create: False for a `js.while_loop` condition, which only reads.
    """

    __slots__ = (
        "what",
        "axes",
        "split",
        "index",
        "length",
        "shared",
        "parent",
        "discovering",
        "may_create",
        "specs",
        "initial",
        "makes",
    )

    def __init__(
        self,
        *,
        what: str,
        axes: dict[str, int],
        split: dict[str, bool],
        index: Any,
        length: int | None,
        shared: dict[str, Any],
        parent: Lift | None,
        discovering: bool = False,
        may_create: bool = True,
    ):
        self.what = what
        self.axes = axes
        self.split = split
        self.index = index
        self.length = length
        self.shared = shared
        self.parent = parent
        self.discovering = discovering
        self.may_create = may_create
        self.specs: dict[str, tuple] = {}  # discovering: path -> (coll, make, keyed)
        self.initial: dict[str, Any] = {}  # stacked: path -> value when created
        self.makes: dict[str, tuple] = {}  # stacked: path -> (make, keyed)

    def fold_param_key(self, key: Any, coll: str) -> Any:
        """The initializer key of a variable of ``coll`` for this pass."""
        if key is not None and coll in self.axes and self.split.get("params", True):
            key = jax.random.fold_in(key, self.index)
        if self.parent is not None:
            key = self.parent.fold_param_key(key, coll)
        return key

    def fold_rng(self, key: Any, stream: str) -> Any:
        """The `js.next_rng_key` base key of ``stream`` for this pass."""
        if self.split.get(stream, False):
            key = jax.random.fold_in(key, self.index)
        if self.parent is not None:
            key = self.parent.fold_rng(key, stream)
        return key

    def create(self, frame, path, coll, make, keyed):
        """Makes the initial value of a variable created in the body."""
        if not self.may_create:
            raise errors.LiftError(
                f"Variable {path} is created in the condition of {self.what}; the "
                "condition may read variables but not create them. Create it "
                "before the loop or in its body.",
                path,
            )
        key = path_key(frame.rng, path) if keyed else None
        if coll in self.axes:
            value = make(self.fold_param_key(key, coll))
            self.initial[path] = value
            self.makes[path] = (make, keyed)
            return value
        if self.discovering:
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

    def take_nested(self, frame, path, coll, value, axis, nested):
        """Takes a variable stacked by a nested transform into this one.

        Returns the value the body sees: the nested stack itself when this
        transform stacks the collection again; when it shares it, the stack is
        created once outside this transform (found by its shape-only pass),
        from the same keys the nested transform used.

        Args:
          frame: This transform's body frame.
          path: The variable's path.
          coll: Its collection.
          value: The nested stack.
          axis: The nested transform's axis for ``coll``.
          nested: ``(makes, length, split_params)`` of the nested transform.
        """
        if coll in self.axes:  # stacked again by this transform
            self.initial[path] = value
            return value
        if self.discovering:
            makes, length, split = nested
            make, keyed = makes[path]

            def make_stack(key):
                keys = [
                    (jax.random.fold_in(key, i) if split else key) if keyed else None
                    for i in range(length)
                ]
                return jnp.moveaxis(jnp.stack([make(k) for k in keys]), 0, axis)

            self.specs[path] = (coll, make_stack, keyed)
            return value
        return self.create(frame, path, coll, None, False)

    def view(
        self,
        given_tree: Any,
        carried: dict[str, Any],
        sliced: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        """The given tree as the body sees it: stacked sliced, carried current.

        ``sliced``: this pass's slices of the stacks handed in, by collection.
        """
        if given_tree is None:
            return None
        sliced = sliced or {}
        view = {}
        for coll, flat in given_tree.items():
            axis = self.axes.get(coll)
            if axis is not None:
                view[coll] = _View(flat, sliced.get(coll, {}), self._slicer(axis))
            elif carried:
                view[coll] = _View(flat, carried, None)
            else:
                view[coll] = flat
        return view

    def _slicer(self, axis: int) -> Callable[[str, Any], Any]:
        def get(path, value):
            if not stacks(value, axis, self.length):
                raise errors.ShapeMismatchError(
                    f"Variable {path} is stacked by {self.what} along axis {axis}, "
                    f"so its axis {axis} must have size {self.length}; found shape "
                    f"{tuple(getattr(value, 'shape', ()))}. Check variable_axes and "
                    "the length.",
                    path,
                )
            return lax.dynamic_index_in_dim(value, self.index, axis, keepdims=False)

        return get


def stacks(value: Any, axis: int, length: int | None) -> bool:
    """Whether ``value`` has an ``axis`` of size ``length``."""
    shape = getattr(value, "shape", ())
    return len(shape) > axis and shape[axis] == length


class _View(Mapping):
    """One collection of the given tree as a body sees it at apply.

    A path's value is ``known[path]`` (a slice handed in, a carried value),
    else ``read(path, flat[path])`` (a stack's slice), else ``flat[path]``.
    """

    __slots__ = ("_flat", "_known", "_read")

    def __init__(self, flat, known, read):
        self._flat = flat
        self._known = known
        self._read = read

    def visible(self) -> dict[str, Any]:
        """The values the body sees that need no new operation to read."""
        if self._read is not None:
            return {p: v for p, v in self._known.items() if p in self._flat}
        known = self._known
        return {p: known.get(p, v) for p, v in _items(self._flat)}

    def __getitem__(self, path):
        value = self._known.get(path, _MISSING)
        if value is not _MISSING and path in self._flat:
            return value
        value = self._flat[path]
        return value if self._read is None else self._read(path, value)

    def __contains__(self, path):
        return path in self._flat

    def __iter__(self):
        return iter(self._flat)

    def __len__(self):
        return len(self._flat)


def _items(flat: Any) -> Any:
    """``flat``'s (path, value) pairs, reading a `_View` without new operations."""
    return (flat.visible() if isinstance(flat, _View) else flat).items()


# ------------------------------------------------------------ LiftedCall


class Crossed(NamedTuple):
    """What one pass of a body hands out of the transform (a pytree).

    Attributes:
      created: At init, the initial values of the stacked variables created.
      updates: The assigned stacked variables, by path.
      carried: The carried (mutable, shared) variables, by path.
    """

    created: dict[str, Any]
    updates: dict[str, Any]
    carried: dict[str, Any]


class LiftedCall:
    """One call of a lifted transform, from discovery to adoption.

    Args:
      what: The transform's public name, for messages (``"js.scan"``).
      axes: ``{collection: axis}`` of the stacked collections.
      split: ``{stream: bool}``: streams whose keys differ per pass.
      carry_shared: Whether mutable shared variables are carried from pass to
        pass; if False (`js.vmap`) the body may not assign them.
      axis_name: The logical axis name of the dimension stacked variables gain
        (for `js.ShardingRules`), or None.

    Raises:
      NotInRunError: Called outside a run.
    """

    __slots__ = (
        "what",
        "axes",
        "split",
        "carry_shared",
        "outer",
        "length",
        "shared",
        "found",
        "children",
        "makes",
        "axis_name",
    )

    def __init__(
        self,
        what: str,
        *,
        axes: dict[str, int] | None = None,
        split: dict[str, bool] | None = None,
        carry_shared: bool = True,
        axis_name: str | None = None,
    ):
        self.what = what
        self.axis_name = axis_name
        self.axes = axes or {}
        self.split = split or {}
        self.carry_shared = carry_shared
        self.outer = context.current_run(what)
        self.length: int | None = None  # passes, once the transform knows
        self.shared: dict[str, Any] = {}  # created outside, by path
        self.found: list[str] | None = None  # paths the shape-only pass created
        self.children: list[context.Frame] = []  # detached, one per traced pass
        self.makes: dict[str, tuple] = {}  # of the last pass's stacked variables

    @property
    def parent(self) -> Lift | None:
        """The lift of the transform this one is nested in, or None."""
        return cast("Lift | None", self.outer.lift)  # only Lifts are installed

    @property
    def initializing(self) -> bool:
        """Whether the run is `js.init`."""
        return self.outer.initializing

    def given(self) -> dict[str, Any]:
        """The tree given to the run, as the enclosing frame sees it (apply)."""
        return cast("dict[str, Any]", self.outer.given_tree)

    def _lift(self, **kwargs: Any) -> Lift:
        return Lift(
            what=self.what,
            axes=self.axes,
            split=self.split,
            length=self.length,
            parent=self.parent,
            **kwargs,
        )

    def discover(
        self,
        *fns: Callable[..., Any],
        args: tuple,
        wrap: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    ) -> None:
        """At init, finds and creates the shared variables of the body.

        Runs each of ``fns`` (a body, or both branches) shape-only on ``args``;
        they must create the same variables. The shared ones are then created
        here, outside the transform.

        Args:
          *fns: The body, or the branches.
          args: Their arguments, as one pass sees them.
          wrap: Wraps the shape-only pass (e.g. in a named `jax.vmap`).
        """
        outer, specs = self.outer, {}
        for fn in fns:
            lift = self._lift(index=0, shared={}, discovering=True)
            found: list[str] = []

            def probe(*args, fn=fn, lift=lift, found=found):
                child = outer.fork(lift=lift, given_tree=None, carried={})
                with child.entered(on_exit=child.detach):
                    fn(*args)
                found[:] = outer.new_paths(child)
                lift.initial = {}  # traced values of this probe
                return 0

            jax.eval_shape(probe if wrap is None else wrap(probe), *args)
            if self.found is not None:
                check_same(self.what, self.found, found)
            self.found = found
            for path, spec in lift.specs.items():
                specs.setdefault(path, spec)
        for path, (coll, make, keyed) in specs.items():
            if outer.lift is None:
                key = path_key(cast("jax.Array", outer.rng), path) if keyed else None
                self.shared[path] = make(key)
            else:
                self.shared[path] = outer.lift.create(outer, path, coll, make, keyed)

    def carried(self) -> dict[str, Any]:
        """Current values of the mutable, shared variables the body may update."""
        outer = self.outer
        if outer.initializing or not self.carry_shared:
            return {}  # assignments at init are not kept; nothing to carry
        mutable = outer.mutable
        out = {}
        for coll, flat in self.given().items():
            if coll in self.axes or not (mutable is True or coll in mutable):
                continue
            for path, value in flat.items():
                out[path] = outer.values.get(path, value)
        return out

    def stacked(self, axis_zero: bool = True) -> dict[str, dict[str, Any]]:
        """At apply, the stacks handed to the body one slice per pass.

        Every array of a stacked collection whose stacked axis has the length:
        the body reads its slice from the transform's per-pass inputs (scan's
        ``xs``, vmap's mapped arguments), never indexing the whole stack, so
        gradients leave as per-pass outputs. JAX drops the stacks the body does
        not read; a stack of another length is refused on read (`Lift.view`).

        Args:
          axis_zero: Move each stacked axis to the front (`jax.lax.scan`).

        Returns:
          ``{collection: {path: stack}}``; empty at init.
        """
        outer, n = self.outer, self.length
        if outer.initializing or not self.axes:
            return {}
        out = {}
        for coll, axis in self.axes.items():
            out[coll] = picked = {}
            for path, value in _items(self.given().get(coll, {})):
                numeric = isinstance(value, np.ndarray) and value.dtype.kind in "biufc"
                if (numeric or isinstance(value, jax.Array)) and stacks(value, axis, n):
                    moved = axis and axis_zero
                    picked[path] = jnp.moveaxis(value, axis, 0) if moved else value
        return out

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        carried: dict[str, Any],
        index: Any = None,
        sliced: dict[str, dict[str, Any]] | None = None,
        condition: bool = False,
    ) -> tuple[Any, Crossed]:
        """Runs one pass of ``fn`` in a forked child, entered then detached.

        Returns ``fn``'s output and what crosses out of the transform.

        Args:
          fn: The body.
          *args: Its arguments.
          carried: The carried variables' values at the start of this pass.
          index: The pass's index, for split keys and the slices of stacks
            not handed in.
          sliced: This pass's slices of the stacks handed in (`stacked`).
          condition: A `js.while_loop` condition: reads what the last body
            pass created, creates nothing, is not recorded.
        """
        outer = self.outer
        lift = self._lift(index=index, shared=self.shared, may_create=not condition)
        child = outer.fork(
            lift=lift,
            given_tree=lift.view(outer.given_tree, carried, sliced),
            carried=carried,
        )
        if condition and self.children:
            self._show_body_variables(child, carried)
        with child.entered(on_exit=child.detach):
            out = fn(*args)
            if not self.carry_shared:
                self._check_no_shared_assignment(child)
            crossed = Crossed(
                created=dict(lift.initial) if child.initializing else {},
                updates={
                    p: child.values[p]
                    for p in child.assigned
                    if child.collection_of[p] in self.axes and p not in carried
                },
                carried={p: child.values[p] for p in carried},
            )
        if not condition:
            self.children.append(child)
            self.makes = dict(lift.makes)
        return out, crossed

    def _show_body_variables(self, child: context.Frame, carried: dict) -> None:
        base, outer = self.children[-1], self.outer
        for path in outer.new_paths(base):
            coll = base.collection_of[path]
            child.kind_of[path] = base.kind_of[path]
            child.collection_of[path] = coll
            if path in carried:
                child.values[path] = carried[path]
            elif outer.initializing:
                child.values[path] = self.shared[path]
            else:
                child.values[path] = self.given()[coll][path]

    def _check_no_shared_assignment(self, child: context.Frame) -> None:
        for path in child.assigned:
            coll = child.collection_of[path]
            if coll not in self.axes:
                raise errors.LiftError(
                    f"Variable {path} is assigned inside {self.what}, but its "
                    f"collection {coll!r} is shared by every member, so the update "
                    "would differ per member. Map the collection with "
                    "variable_axes, or assign outside.",
                    path,
                )

    def _stack_axes(self, path: str, ndim: int, axis: int) -> None:
        """Names the stacked dimension in the logical axes of ``path``."""
        axes_of = self.outer.axes_of
        inner = axes_of.get(path)
        if inner is None and self.axis_name is None:
            return
        if inner is None:
            inner = (None,) * (ndim - 1)
        axes_of[path] = (*inner[:axis], self.axis_name, *inner[axis:])

    def finish(self, crossed: Crossed, child: context.Frame | None = None) -> None:
        """Makes the body's rule state the run's, with the transform's results.

        Args:
          crossed: What the transform returned: stacked values and updates
            stacked on axis 0, and the final carried values.
          child: The pass whose rule state to adopt; the last one by default.
        """
        outer, axes = self.outer, self.axes
        child = self.children[-1] if child is None else child
        if outer.initializing and self.found is not None:
            check_same(self.what, self.found, outer.new_paths(child))
        nested = (self.makes, self.length, self.split.get("params", True))
        for path in outer.adopt(child):
            coll = outer.collection_of[path]
            if not outer.initializing:
                value = self.given()[coll][path]
            elif path in crossed.created:
                value = jnp.moveaxis(crossed.created[path], 0, axes[coll])
                if self.parent is not None:
                    value = self.parent.take_nested(
                        outer, path, coll, value, axes[coll], nested
                    )
            else:
                value = self.shared[path]
            if coll in axes:
                self._stack_axes(path, value.ndim, axes[coll])
            if outer.initializing:
                outer.created[path] = (coll, value)
            outer.values[path] = value
        for path, reg in child.regularizers:
            axis = axes.get(child.collection_of[path])
            if axis is not None:
                reg = _stacked_regularizer(reg, axis)
            outer.regularizers.append((path, reg))
        updates = {
            p: jnp.moveaxis(v, 0, axes[child.collection_of[p]])
            for p, v in crossed.updates.items()
        }
        outer.values.update(crossed.carried)
        assigned = child.assigned
        updates.update((p, v) for p, v in crossed.carried.items() if p in assigned)
        for path, value in updates.items():
            outer.values[path] = value
            if not outer.initializing:
                outer.assigned[path] = value


def check_same(what: str, first: list[str], second: list[str]) -> None:
    """Raises `LiftError` unless two passes created the same paths."""
    if sorted(first) != sorted(second):
        only1 = sorted(set(first) - set(second))
        only2 = sorted(set(second) - set(first))
        raise errors.LiftError(
            f"The body of {what} creates different variables on different passes "
            f"(only on one: {only1 or '-'}; only on the other: {only2 or '-'}). "
            "Every iteration or branch must create the same variables.",
            (only1 or only2)[0],
        )


def _stacked_regularizer(reg, axis):
    def stacked(value):
        return jnp.sum(jax.vmap(reg, in_axes=axis)(value))

    return stacked
