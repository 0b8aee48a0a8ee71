"""`js.transform` and `js.make_template`: functions bound to init/apply or a scope.

No ``from __future__ import annotations`` here: `Transformed`'s field types stay
objects, so ``typing.get_type_hints`` resolves them although the class shows
itself as ``jscope.Transformed``.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jscope._src import context, names
from jscope._src.run import apply, init
from jscope._src.scope import VariableScope, variable_scope
from jscope.typing import VariableTree


class Transformed(NamedTuple):
    """A pair of pure functions, ``init`` and ``apply``, bound to one function."""

    init: Callable[..., Any]
    apply: Callable[..., Any]


def transform(fn: Callable[..., Any]) -> Transformed:
    """Binds `js.init` and `js.apply` to ``fn``.

    Example:
      >>> import jax, jscope as js
      >>> model = js.transform(lambda: js.get_variable("w", (2,)))
      >>> v = model.init(jax.random.key(0))
      >>> bool((model.apply(v) == v["params"]["w"]).all())
      True
    """

    def init_fn(rng: Any, *args: Any, **kwargs: Any) -> VariableTree:
        return init(fn, rng, *args, **kwargs)

    def apply_fn(variables: Mapping[str, Any], *args: Any, **kwargs: Any):
        return apply(fn, variables, *args, **kwargs)

    init_fn.__doc__ = f"js.init of {getattr(fn, '__name__', fn)!s}."
    apply_fn.__doc__ = f"js.apply of {getattr(fn, '__name__', fn)!s}."
    return Transformed(init_fn, apply_fn)


class _Template:
    __slots__ = ("_name", "_fn", "_getter", "_kwargs", "__wrapped__")

    def __init__(self, name, fn, custom_getter, kwargs):
        self._name = names.validate(name, "template")
        self._fn = fn
        self._getter = custom_getter
        self._kwargs = kwargs
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self._name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        frame = context.current_run(f"Template {self._name!r}")
        kwargs = {**self._kwargs, **kwargs}
        scope: VariableScope | None = frame.templates.get(id(self), (None, None))[1]
        if scope is None:
            with variable_scope(
                None, default_name=self._name, custom_getter=self._getter
            ) as scope:
                frame.templates[id(self)] = (self, scope)
                return self._fn(*args, **kwargs)
        with variable_scope(scope, reuse=True):
            return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<js.make_template {self._name!r} of {self._fn!r}>"


def make_template(
    name: str, fn: Callable[..., Any], custom_getter: Any = None, **kwargs: Any
) -> Callable[..., Any]:
    """Wraps ``fn`` so that every call in a run shares one set of variables.

    The first call in a run opens a new scope named ``name`` (uniquified:
    ``name_1`` if taken) and creates the variables; later calls reuse them.

    Args:
      name: The scope name.
      fn: The function to wrap.
      custom_getter: A custom getter for the template's scope.
      **kwargs: Bound keyword arguments for ``fn``.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> scale = js.make_template("scale", lambda x: x * js.get_variable("s", ()))
      >>> v = js.init(lambda x: scale(x) + scale(x), jax.random.key(0), 1.0)
      >>> list(js.flatten(v))
      ['params/scale/s']
    """
    return _Template(name, fn, custom_getter, kwargs)
