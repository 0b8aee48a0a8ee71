"""`ExponentialMovingAverage`: TF1's ``tf.train.ExponentialMovingAverage`` on trees.

This module owns the shadow variables of moving averages: where they live in a
variable tree (``state/<path>/ExponentialMovingAverage``, TF1's names, so a TF1
checkpoint with averages loads with `js.tf1.restore`), how they are created and
TF1's update rule. It works on whole trees, outside `js.init`/`js.apply`: TF1
put a shadow at ``<path>/ExponentialMovingAverage``, below the variable's own
path, which a run refuses (a `jscope.errors.PathConflictError`), while a tree
holds both, in two collections.

Imports: `jscope.errors`, `tree`, JAX and NumPy only. No hot path: `apply` runs
once per training step, inside the caller's `jax.jit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jscope import errors
from jscope._src import tree
from jscope.typing import ArrayLike, VariableTree

_COLLECTIONS = ("params", "state")


class ExponentialMovingAverage:
    """Moving averages of variables, as ``tf.train.ExponentialMovingAverage``.

    `apply` keeps, for each variable ``<path>``, a shadow variable
    ``state/<path>/ExponentialMovingAverage`` (``name`` is the last part),
    created with the variable's value and then updated by TF1's rule::

        shadow -= (1 - decay) * (shadow - variable)

    With ``num_updates`` (TF1's ``global_step``), the decay is
    ``min(decay, (1 + num_updates) / (10 + num_updates))``, so early averages
    move faster. The shadows are TF1's names, so a TF1 checkpoint holding them
    loads with `js.tf1.restore` into a tree that has them (`apply` once to the
    initial tree), and `js.tf1.save_checkpoint` writes them back as TF1 did.

    Unlike TF1, `apply` is a pure function of the tree: call it after each
    optimizer step, ``variables = ema.apply(variables, num_updates=step)``,
    inside the jitted step or outside it. Calling it on the initial tree
    creates the shadows from the initial values, as TF1 does when it builds the
    graph; a shadow created later starts from the value at that time.

    Args:
      decay: The decay, a float in ``[0, 1]`` (typically 0.999 or 0.9999).
      num_updates: TF1's optional step count, for every `apply` that does not
        pass its own (TF1 read a tensor such as ``global_step`` at each run:
        pass the current step to ``apply(num_updates=...)`` instead).
      zero_debias: Accepted as TF1 does; TF1 applies it to averaged tensors
        only, never to variables, and so does this class: averages of
        variables are the same with either value.
      name: The shadows' last path component (TF1's default).

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> ema = js.ExponentialMovingAverage(decay=0.9)
      >>> v = {"params": {"dense": {"kernel": jnp.array([1.0, 2.0])}}}
      >>> v = ema.apply(v)  # creates the shadow from the value
      >>> js.flatten(v)
      {'params/dense/kernel': Array([1., 2.], dtype=float32),
       'state/dense/kernel/ExponentialMovingAverage': Array([1., 2.], dtype=float32)}
      >>> v["params"]["dense"]["kernel"] = jnp.array([3.0, 4.0])  # a training step
      >>> ema.apply(v)["state"]["dense"]["kernel"]["ExponentialMovingAverage"]
      Array([1.2, 2.2], dtype=float32)
      >>> ema.average_name("dense/kernel")
      'dense/kernel/ExponentialMovingAverage'
    """

    __module__ = "jscope"

    def __init__(
        self,
        decay: float,
        num_updates: ArrayLike | None = None,
        zero_debias: bool = False,
        name: str = "ExponentialMovingAverage",
    ):
        if not isinstance(name, str) or not name or "/" in name:
            raise errors.InvalidNameError(
                f"ExponentialMovingAverage name must be a non-empty name without "
                f"'/', got {name!r}. Pass e.g. name='ExponentialMovingAverage'.",
                None,
            )
        self._decay = decay
        self._num_updates = num_updates
        self._zero_debias = bool(zero_debias)
        self._name = name

    @property
    def name(self) -> str:
        """The shadows' last path component."""
        return self._name

    def average_name(self, var: str) -> str:
        """The shadow's path (TF1 name) for the variable at ``var``.

        Args:
          var: The variable's path, ``dense/kernel`` (or ``params/dense/kernel``).

        Returns:
          ``dense/kernel/ExponentialMovingAverage``, in collection ``state``.
        """
        return f"{_strip(var)}/{self._name}"

    def average(self, variables: VariableTree, var: str) -> jax.Array | None:
        """The shadow of the variable at ``var`` in ``variables``; None if none.

        As TF1's ``average``, which returned None for a variable it did not
        average.
        """
        return tree.flatten(variables).get(f"state/{self.average_name(var)}")

    def averaged(self, variables: VariableTree) -> VariableTree:
        """A new tree whose averaged variables hold their averages, for evaluation.

        TF1 restored ``variables_to_restore()`` into the model for this; here the
        averages replace the values in a copy of the tree (shadows kept).
        """
        flat = tree.flatten(variables)
        out = dict(flat)
        for coll_path in flat:
            shadow = f"state/{self.average_name(coll_path)}"
            if shadow in flat and coll_path.split("/", 1)[0] in _COLLECTIONS:
                out[coll_path] = flat[shadow].astype(flat[coll_path].dtype)
        return tree.unflatten(out)

    def apply(
        self,
        variables: VariableTree,
        var_list: Sequence[str] | None = None,
        *,
        num_updates: ArrayLike | None = None,
    ) -> VariableTree:
        """Creates the missing shadows and updates the others; returns a new tree.

        Args:
          variables: A variable tree, e.g. from `js.init`. Left unchanged.
          var_list: Paths of the variables to average (``dense/kernel``, or with
            their collection, ``params/dense/kernel``); None averages every
            variable in ``params`` (TF1's default: the trainable variables).
          num_updates: The step count for this update; None uses the
            constructor's (None there: no warm-up).

        Returns:
          A new tree with ``state/<path>/<name>`` for each variable.

        Raises:
          VariableNotFoundError: A path of ``var_list`` is not in the tree.
          InvalidDtypeError: A variable is not floating point (TF1's TypeError).
          PathConflictError: A variable in ``state`` has no room below it.
        """
        flat = tree.flatten(variables)
        if var_list is None:
            var_list = [p for p in flat if p.startswith("params/")]
        n = self._num_updates if num_updates is None else num_updates
        out = dict(flat)
        for var in var_list:
            coll_path = _find(flat, var)
            shadow_path = f"state/{self.average_name(coll_path)}"
            value = flat[coll_path]
            _check_float(value, coll_path)
            if shadow_path not in flat:
                if coll_path.startswith("state/"):
                    raise errors.PathConflictError(
                        f"Variable {_strip(coll_path)} is in collection 'state', so "
                        f"its average {shadow_path} cannot sit below it in the same "
                        "nested dict. Average variables of 'params' only, or keep "
                        "this average yourself.",
                        _strip(coll_path),
                    )
                out[shadow_path] = jnp.asarray(value)
            else:
                out[shadow_path] = _update(flat[shadow_path], value, self._decay, n)
        return tree.unflatten(out)


def _update(shadow: Any, value: Any, decay: float, n: ArrayLike | None) -> jax.Array:
    """TF1's ``assign_moving_average`` without zero debias, in float32 steps."""
    d = jnp.asarray(decay, jnp.float32)
    if n is not None:
        nf = jnp.asarray(n).astype(jnp.float32)
        d = jnp.minimum(d, (1.0 + nf) / (10.0 + nf))
    shadow = jnp.asarray(shadow)
    rate = (1.0 - d).astype(shadow.dtype)
    return shadow - (shadow - jnp.asarray(value, shadow.dtype)) * rate


def _strip(path: str) -> str:
    """``params/dense/kernel`` → ``dense/kernel``; a path without one unchanged."""
    head, _, rest = path.partition("/")
    return rest if head in _COLLECTIONS and rest else path


def _find(flat: dict[str, Any], var: Any) -> str:
    """The ``<collection>/<path>`` of ``var`` in the flat tree."""
    if not isinstance(var, str):
        raise errors.ArgumentTypeError(
            f"ExponentialMovingAverage.apply takes variable paths, got {var!r:.60} "
            f"({type(var).__name__}). Pass paths such as 'dense/kernel' (the tree "
            "holds the values).",
            None,
        )
    for candidate in (var, f"params/{var}", f"state/{var}"):
        if candidate in flat and candidate.split("/", 1)[0] in _COLLECTIONS:
            return candidate
    raise errors.VariableNotFoundError(
        f"Variable {_strip(var)} does not exist in the tree given to "
        "ExponentialMovingAverage.apply (looked in 'params' and 'state'). Pass the "
        "path of a variable of the tree, e.g. from js.flatten(variables).",
        _strip(var),
    )


def _check_float(value: Any, coll_path: str) -> None:
    dtype = np.dtype(value.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise errors.InvalidDtypeError(
            f"Variable {_strip(coll_path)} has dtype {dtype}: moving averages need "
            "a floating-point variable (half, float or double, as in TF1). Leave it "
            "out of var_list.",
            _strip(coll_path),
        )


# The class's public module is `jscope`, so doctest does not find it here.
__test__ = {"ExponentialMovingAverage": ExponentialMovingAverage.__doc__}
