"""Abstract-first `js.init`: trace the function shape-only, then draw its variables.

An eager `js.init` runs the user's function on its input, so every operation
of the forward pass (matmul, softmax, layer norm) is compiled once per
distinct shape: most of a cold init of a model of many widths. Its result,
though, is only the variables' initial values, and almost every one of them
is ``initializer(path_key(rng, path), shape, dtype)``, known without the
forward pass. So `init` first runs the function under `jax.eval_shape`, with
a `Recorder` as the root frame's `context.Crossing`: each variable the run
creates hands it its ``make(key)``, and the recorder keeps it. Then the
recorded makes run eagerly, in creation order, with the keys an eager run
derives: the same calls, so the same values bit for bit, and nothing of the
forward pass is compiled.

`init` returns None, and `js.init` runs the function eagerly as before, when
the abstract pass cannot stand for the eager one:

- the function raises anything while traced: a concretization error
  (``if float(x.sum())``), or any error at all, which the eager run then
  raises as it always did (same class, message and traceback);
- a variable's value does not come from the recorder: the stacked variables
  a `js.scan` or `js.vmap` creates in its body;
- a recorded make fails eagerly, or gives a tracer: its initial value is
  derived from the input, another variable or a key of the run (a
  ``js.Variable(x.mean())``), which the trace has long closed;
- not eager (inside the caller's `jax.jit`) or ``jax_disable_jit`` is on.

Python side effects of the function (``print``) therefore run with tracers,
and a second time when the eager run follows; ``jax.debug.print`` prints
nothing in the abstract pass (docs/design.md, "Cold init").

Imports: `context` (the frame type), `jax_compat`, `rng` (the keys), `tree`.
Hot path: none; one abstract pass and one eager call per variable per init.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import jax
from jax.core import Tracer

from jscope._src import context, jax_compat, tree
from jscope._src.rng import path_key


class Fallback(Exception):
    """Raised inside the abstract pass: the eager run must make this init."""


class Recorder:
    """The root frame's `context.Crossing` in the abstract pass.

    `create` is called for every variable the root frame creates (by
    `get_variable`, `js.Variable`, or a lifted transform's shared variables)
    with its ``make``; it keeps ``(collection, make, keyed)`` and returns
    ``make`` of the traced key, as an eager run would. The other methods are
    those a nested `lift.Lift` asks of its parent; at the root they change
    nothing, except that a stacked variable (`take_nested`) has no recipe.
    """

    __slots__ = ("rng", "recipes", "made", "unsupported")

    def __init__(self, rng: Any):
        self.rng: Any = rng  # the concrete params key of the run
        self.recipes: dict[str, tuple[str, Callable[[Any], Any], bool]] = {}
        self.made: dict[str, Any] = {}  # path -> the traced value handed out
        self.unsupported: str | None = None  # why the eager run must follow

    def create(
        self,
        frame: context.Frame,
        path: str,
        coll: str,
        make: Callable[[Any], Any] | None,
        keyed: bool,
    ) -> Any:
        """Records ``make`` and returns its traced value, as an eager run's."""
        if make is None:  # only a Lift hands None (`Lift.take_nested`)
            self._refuse(f"variable {path} has no initializer")
            raise AssertionError  # not reached
        key = path_key(cast("jax.Array", frame.rng), path) if keyed else None
        value = make(key)
        self.recipes[path] = (coll, make, keyed)
        self.made[path] = value
        return value

    def fold_rng(self, key: Any, stream: str) -> Any:
        """A root pass: the stream's key unchanged."""
        return key

    def fold_param_key(self, key: Any, coll: str) -> Any:
        """A root pass: the initializer key unchanged."""
        return key

    def take_nested(
        self,
        frame: context.Frame,
        path: str,
        coll: str,
        value: Any,
        axis: int,
        nested: Any,
    ) -> Any:
        """A variable stacked by a transform at the root: no recipe for it."""
        self._refuse(f"variable {path} is stacked by a lifted transform")
        return value  # not reached

    def _refuse(self, why: str) -> None:
        self.unsupported = why
        raise Fallback(why)


def fast_path_open() -> bool:
    """Whether an abstract pass may stand for the eager run here."""
    return jax_compat.eager() and not jax.config.values["jax_disable_jit"]


def init(
    fn: Callable[..., Any],
    rng: Any,
    args: tuple,
    kwargs: dict,
    make_frame: Callable[[Any], context.Frame],
    ordered: Callable[[context.Frame], Iterable[tuple[str, tuple[str, Any]]]],
) -> dict[str, Any] | None:
    """`js.init` of ``fn`` by an abstract pass and eager draws, or None.

    Args:
      fn: The function given to `js.init`.
      rng: Its key, or dict of keys.
      args: Its positional arguments (closed over by the trace: arrays stay
        concrete, as in an eager run, but every operation on them is traced).
      kwargs: Its keyword arguments.
      make_frame: ``make_frame(rng)``, the run's init frame (checks ``rng``).
      ordered: ``ordered(frame)``, the created ``(path, (collection, value))``
        in the order of the returned tree.

    Returns:
      The variable tree, equal bit for bit and in key order to the eager
      run's, or None when the eager run must make it (module docstring).
    """
    recorder = Recorder(None)
    plan: list[tuple[str, str]] = []

    def abstract() -> None:
        frame = make_frame(rng)
        recorder.rng = frame.rng
        frame.lift = recorder
        with frame.entered(on_exit=frame.close):
            fn(*args, **kwargs)
            made = recorder.made
            for path, (coll, value) in ordered(frame):
                recipe = recorder.recipes.get(path)
                if recipe is None or recipe[0] != coll or made[path] is not value:
                    recorder._refuse(f"variable {path} was made outside the recorder")
                plan.append((path, coll))

    try:
        jax.eval_shape(abstract)
    except Exception:  # the eager run raises it again, or succeeds
        return None
    if recorder.unsupported is not None:  # a Fallback the function swallowed
        return None
    return _draw(recorder, plan)


def _draw(recorder: Recorder, plan: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Runs the recorded makes eagerly, in creation order; None if one fails."""
    key_of = recorder.rng
    leaves = []
    for path, coll in plan:
        _, make, keyed = recorder.recipes[path]
        try:
            value = make(path_key(key_of, path) if keyed else None)
        except Exception:  # e.g. a tracer of the closed trace: the eager run
            return None
        if isinstance(value, Tracer):  # passed through unchanged
            return None
        leaves.append((f"{coll}/{path}", value))
    return tree.unflatten(leaves)
