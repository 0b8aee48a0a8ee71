"""tf-slim's argument scopes: ``arg_scope`` and ``add_arg_scope``.

An *argument scope* maps each decorated function to default keyword arguments.
``with arg_scope([f, g], k=v):`` copies the current scope, sets ``k=v`` for
``f`` and ``g`` (later arguments win over earlier ones for the same function)
and makes the copy current for the block; ``with arg_scope(sc):`` makes a
scope captured earlier current again, replacing the one in force (TF1's rule:
a reused scope is not merged with the current one). A function decorated with
`add_arg_scope` looks up its defaults when it is called; the call's own
arguments, by keyword or by position, win over the scope.

The current scope lives in this module's `ContextVar`, as TF1 kept it in a
module global: argument defaults are a property of the Python code being run,
not of a run's variables, so they may be set around `js.init` as well as inside
the model function. Each thread and asyncio task sees its own.

Imports: `jscope.errors` only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from jscope import errors

F = TypeVar("F", bound=Callable[..., Any])

# The stack of scopes in force, innermost last; each scope is a dict
# {key: {arg: value}} that is never mutated once pushed.
_STACK: contextvars.ContextVar[tuple[dict[Any, dict[str, Any]], ...]] = (
    contextvars.ContextVar("jscope_slim_arg_scope", default=())
)

_MARK = "__jscope_arg_scope__"  # on a decorated function: (key, keyword names)


def _copy(scope: Mapping[Any, Mapping[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {key: dict(kwargs) for key, kwargs in scope.items()}


def current_arg_scope() -> dict[Any, dict[str, Any]]:
    """Returns a copy of the argument scope in force: ``{key: {arg: value}}``.

    Keys are `arg_scope_func_key` of the decorated functions. Outside any
    `arg_scope` the scope is empty.

    Example:
      >>> import jscope.slim as slim
      >>> with slim.arg_scope([slim.conv2d], padding="VALID"):
      ...     scope = slim.current_arg_scope()
      >>> scope[slim.arg_scope_func_key(slim.conv2d)]
      {'padding': 'VALID'}
      >>> slim.current_arg_scope()
      {}
    """
    stack = _STACK.get()
    return _copy(stack[-1]) if stack else {}


def arg_scope_func_key(op: Callable[..., Any]) -> Any:
    """The key of ``op`` in an argument scope: the function `add_arg_scope` wrapped.

    Args:
      op: A function decorated with `add_arg_scope` (or any callable).

    Returns:
      The undecorated function for a decorated one, else ``op`` itself.
    """
    mark = getattr(op, _MARK, None)
    return op if mark is None else mark[0]


def has_arg_scope(op: Callable[..., Any]) -> bool:
    """Whether ``op`` was decorated with `add_arg_scope`."""
    return getattr(op, _MARK, None) is not None


def arg_scoped_arguments(op: Callable[..., Any]) -> list[str]:
    """The names of ``op``'s arguments that have defaults (TF1's list).

    Raises:
      LayerArgumentError: ``op`` is not decorated with `add_arg_scope`.
    """
    _check_decorated(op)
    func = arg_scope_func_key(op)
    return [
        p.name
        for p in inspect.signature(func).parameters.values()
        if p.default is not inspect.Parameter.empty
    ]


def _op_name(op: Any) -> str:
    return (
        getattr(op, "__qualname__", None) or getattr(op, "__name__", None) or repr(op)
    )


def _check_decorated(op: Any) -> None:
    if not has_arg_scope(op):
        raise errors.LayerArgumentError(
            f"arg_scope: {_op_name(op)} is not decorated with @add_arg_scope, so "
            "an argument scope cannot set its arguments. Decorate it "
            "(@jscope.slim.add_arg_scope), or list only jscope.slim's layers "
            "(jscope.slim.conv2d, ...), not tf.contrib's or another library's.",
            "",
        )


def _check_accepts(op: Any, kwargs: Mapping[str, Any]) -> None:
    names = getattr(op, _MARK)[1]
    if names is None:  # the function takes **kwargs
        return
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise errors.UnknownArgumentError(
            f"arg_scope([{_op_name(op)}, ...], {', '.join(unknown)}=...): "
            f"{_op_name(op)}() has no argument {', '.join(map(repr, unknown))}. Its "
            f"keyword arguments are {', '.join(names)}. Check the spelling, or "
            "open a separate arg_scope for the functions that take it.",
            "",
        )


@contextlib.contextmanager
def arg_scope(
    list_ops_or_scope: Sequence[Callable[..., Any]] | Mapping[Any, Mapping[str, Any]],
    **kwargs: Any,
) -> Iterator[dict[Any, dict[str, Any]]]:
    """Sets default arguments of decorated functions for a block, as tf-slim.

    Args:
      list_ops_or_scope: A list or tuple of functions decorated with
        `add_arg_scope`, or a scope dict yielded by an earlier ``arg_scope``
        (then ``kwargs`` must be empty and the dict replaces the current scope).
      **kwargs: The defaults, set for every function listed; they override the
        enclosing scopes' for those functions.

    Yields:
      A copy of the new scope, ``{key: {arg: value}}``, to re-enter later with
      ``with arg_scope(sc):``.

    Raises:
      ArgumentTypeError: ``list_ops_or_scope`` is neither a list/tuple nor a
        dict (a ``TypeError``, as TF1).
      LayerArgumentError: A listed function is not decorated, or a dict comes
        with keyword arguments (a ``ValueError``, as TF1).
      UnknownArgumentError: A listed function has no argument of that name (a
        ``TypeError``; TF1 raised it at the call).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js, jscope.slim as slim
      >>> def net(x):
      ...     with slim.arg_scope([slim.conv2d], padding="VALID", activation_fn=None):
      ...         x = slim.conv2d(x, 4, [3, 3], scope="conv1")
      ...         return slim.conv2d(x, 2, [1, 1], padding="SAME", scope="conv2")
      >>> v = js.init(net, jax.random.key(0), jnp.ones((1, 5, 5, 3)))
      >>> js.apply(net, v, jnp.ones((1, 5, 5, 3))).shape
      (1, 3, 3, 2)
    """
    if isinstance(list_ops_or_scope, Mapping):
        if kwargs:
            raise errors.LayerArgumentError(
                "arg_scope(scope, **kwargs): when re-using a scope given as a "
                f"dict, kwargs must be empty; got {sorted(kwargs)}. Nest a second "
                "arg_scope([ops], ...) inside `with arg_scope(scope):`.",
                "",
            )
        new = _copy(list_ops_or_scope)
    elif isinstance(list_ops_or_scope, list | tuple):
        stack = _STACK.get()
        new = _copy(stack[-1]) if stack else {}
        for op in list_ops_or_scope:
            _check_decorated(op)
            _check_accepts(op, kwargs)
            key = arg_scope_func_key(op)
            new[key] = {**new.get(key, {}), **kwargs}
    else:
        raise errors.ArgumentTypeError(
            "arg_scope: list_ops_or_scope must either be a list/tuple of "
            "functions decorated with @add_arg_scope or a reused scope (i.e. "
            f"dict), got {type(list_ops_or_scope).__name__}. Wrap a single "
            "function in a list: arg_scope([slim.conv2d], ...).",
            "",
        )
    token = _STACK.set((*_STACK.get(), new))
    try:
        yield _copy(new)
    finally:
        _STACK.reset(token)


def _keyword_names(func: Callable[..., Any]) -> tuple[str, ...] | None:
    params = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.kind in kinds)


def _positional_names(func: Callable[..., Any]) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(
        p.name for p in inspect.signature(func).parameters.values() if p.kind in kinds
    )


def add_arg_scope(func: F) -> F:
    """Decorates ``func`` so that `arg_scope` can set its keyword arguments.

    The decorated function looks up the current scope at each call; arguments
    given in the call, by keyword or by position, win over the scope's (TF1
    raised ``TypeError`` for a positional one that the scope also set).

    Args:
      func: A function; its name, docstring and signature are kept.

    Returns:
      The decorated function.

    Example:
      >>> import jscope.slim as slim
      >>> @slim.add_arg_scope
      ... def scale(x, factor=1.0):
      ...     return x * factor
      >>> with slim.arg_scope([scale], factor=3.0):
      ...     print(scale(2.0), scale(2.0, 10.0), scale(2.0, factor=0.5))
      6.0 20.0 1.0
    """
    positional = _positional_names(func)

    @functools.wraps(func)
    def func_with_args(*args: Any, **kwargs: Any) -> Any:
        stack = _STACK.get()
        if stack:
            defaults = stack[-1].get(func)
            if defaults:
                given = set(positional[: len(args)]) | kwargs.keys()
                kwargs = {
                    **{k: v for k, v in defaults.items() if k not in given},
                    **kwargs,
                }
        return func(*args, **kwargs)

    setattr(func_with_args, _MARK, (func, _keyword_names(func)))
    return func_with_args  # type: ignore[return-value]
