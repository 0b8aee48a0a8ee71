"""Variable scopes, with TF1's reuse and naming rules (name scopes: `name_scopes`)."""

from __future__ import annotations

import functools
from typing import Any

from jscope import errors
from jscope._src import context, names
from jscope._src.context import PLAN_ENTER, PLAN_EXIT, peek  # bound: the hot path
from jscope._src.names import VALID_SCOPES
from jscope.typing import AutoReuse

AUTO_REUSE = AutoReuse()

_new = object.__new__  # an instance of a slotted class without its __init__

_UNSUPPORTED_SCOPE_ARGS = {
    "caching_device": "jscope places arrays with jax.device_put / shardings",
    "partitioner": "jscope shards variables with js.ShardingRules (paths or axes=)",
    "use_resource": "every jscope variable is a plain jax.Array",
    "constraint": "apply the constraint to the value after the optimizer update",
}


def check_reuse(reuse: Any) -> None:
    """Raises `ReuseFlagError` unless ``reuse`` is None, True, False or AUTO_REUSE."""
    if reuse is None or reuse is True or reuse is False or reuse is AUTO_REUSE:
        return
    raise errors.ReuseFlagError(
        f"The reuse parameter must be True or False or None (or js.AUTO_REUSE), "
        f"got {reuse!r} of type {type(reuse).__name__}."
    )


class VariableScope:
    """A variable scope: a path prefix plus defaults for `get_variable` inside it.

    Get the current one with `js.get_variable_scope()`, or capture one with
    ``with js.variable_scope("name") as scope:`` and re-enter it later with
    ``js.variable_scope(scope)``. As in TF1 the attributes are read-only; the
    ``set_*`` methods and `reuse_variables` change them.

    Attributes:
      name: The full path of the scope (``""`` at the root).
      reuse: ``False``, ``True`` or ``js.AUTO_REUSE``.
      original_name_scope: The name scope of the scope's first entry, with a
        trailing ``/`` (``""`` at the root).
      initializer: Default initializer for variables created inside, or None.
      regularizer: Default regularizer for variables created inside, or None.
      dtype: Default dtype for variables created inside, or None (float32).
      custom_getter: The getter wrapping `get_variable` inside, or None.
    """

    # `variable_scope.__enter__` makes instances without calling `__init__`:
    # a new slot must be set there too, twice (a replayed entry sets them all in
    # this order, as `plans` records them). `_plain` is `_is_plain` of the
    # others, kept by every method that changes one of them.

    __slots__ = (
        "_reuse",
        "_name",
        "_initializer",
        "_regularizer",
        "_dtype",
        "_custom_getter",
        "_original_name_scope",
        "_plain",
    )
    __module__ = "jscope"

    def __init__(
        self,
        reuse: Any,
        name: str = "",
        initializer: Any = None,
        regularizer: Any = None,
        dtype: Any = None,
        custom_getter: Any = None,
        original_name_scope: str = "",
    ):
        if not (
            reuse is None or reuse is False or reuse is True or reuse is AUTO_REUSE
        ):
            check_reuse(reuse)  # raises
        self._reuse = reuse if reuse else False
        self._name: str = name
        self._initializer: Any = initializer
        self._regularizer: Any = regularizer
        self._dtype: Any = dtype
        self._custom_getter: Any = custom_getter
        self._original_name_scope: str = original_name_scope
        self._plain = _is_plain(self)

    @property
    def name(self) -> str:
        """The full path of the scope (``""`` at the root)."""
        return self._name

    @property
    def reuse(self) -> Any:
        """``False``, ``True`` or ``js.AUTO_REUSE``."""
        return self._reuse

    @property
    def original_name_scope(self) -> str:
        """The name scope of the scope's first entry, with a trailing ``/``."""
        return self._original_name_scope

    @property
    def initializer(self) -> Any:
        """Default initializer for variables created inside, or None."""
        return self._initializer

    @initializer.setter
    def initializer(self, value: Any) -> None:
        _read_only(self, "initializer", "set_initializer")

    @property
    def regularizer(self) -> Any:
        """Default regularizer for variables created inside, or None."""
        return self._regularizer

    @regularizer.setter
    def regularizer(self, value: Any) -> None:
        _read_only(self, "regularizer", "set_regularizer")

    @property
    def dtype(self) -> Any:
        """Default dtype for variables created inside, or None (float32)."""
        return self._dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        _read_only(self, "dtype", "set_dtype")

    @property
    def custom_getter(self) -> Any:
        """The getter wrapping `get_variable` inside, or None."""
        return self._custom_getter

    @custom_getter.setter
    def custom_getter(self, value: Any) -> None:
        _read_only(self, "custom_getter", "set_custom_getter")

    def reuse_variables(self) -> None:
        """Makes this scope reuse variables for the rest of its block.

        Sub-scopes opened afterwards inherit the flag. At the root scope it lasts
        for the rest of the run.
        """
        context.end_plan()  # later events see the change
        self._reuse = True
        self._plain = False

    def set_initializer(self, initializer: Any) -> None:
        """Sets the default initializer for this scope."""
        context.end_plan()  # later events see the change
        self._initializer = initializer
        self._plain = _is_plain(self)

    def set_regularizer(self, regularizer: Any) -> None:
        """Sets the default regularizer for this scope."""
        context.end_plan()  # later events see the change
        self._regularizer = regularizer
        self._plain = _is_plain(self)

    def set_dtype(self, dtype: Any) -> None:
        """Sets the default dtype for this scope."""
        context.end_plan()  # later events see the change
        self._dtype = dtype
        self._plain = _is_plain(self)

    def set_custom_getter(self, custom_getter: Any) -> None:
        """Sets the custom getter for this scope."""
        context.end_plan()  # later events see the change
        self._custom_getter = custom_getter
        self._plain = _is_plain(self)

    def get_variable(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """`js.get_variable` with ``name`` taken relative to this scope.

        As in TF1, the variable is made under this scope's path, flag and
        defaults without entering the scope: no default-name count, no name scope.
        """
        frame = context.current_run("VariableScope.get_variable")
        if frame.plan_mode is not None:  # a scope swapped in: no plan's event
            frame.plan_mode.end(frame)
        caller = frame.scope
        frame.scope = self
        try:
            return frame.get_variable(name, *args, **kwargs)  # pyright: ignore[reportOptionalCall]
        finally:
            frame.scope = caller

    def __repr__(self) -> str:
        return f"VariableScope(name={self._name!r}, reuse={self._reuse!r})"


def _is_plain(scope: VariableScope) -> bool:
    """Whether ``scope`` leaves `get_variable`'s read at apply as it is.

    That is: not ``reuse=True``, no custom getter, no default regularizer or
    dtype, and a default initializer that is None or a function (not a value).
    `get_variable` takes its hot path only in such a scope.
    """
    return (
        scope._reuse is not True
        and scope._custom_getter is None
        and scope._regularizer is None
        and scope._dtype is None
        and (scope._initializer is None or callable(scope._initializer))
    )


def _read_only(scope: VariableScope, attr: str, setter: str) -> None:
    raise errors.ReadOnlyAttributeError(
        f"The {attr} of variable scope {scope._name!r} is read-only, as in TF1: "
        f"call scope.{setter}(...) to change it.",
        scope._name,
    )


def wrap_getter(outer: Any, inner: Any) -> Any:
    """Composes getters so that ``inner`` runs first, then ``outer``."""
    if outer is None:
        return inner
    if inner is None:
        return outer

    def getter(real_getter, *args, **kwargs):
        return inner(functools.partial(outer, real_getter), *args, **kwargs)

    return getter


class variable_scope:  # noqa: N801 (TF1's name)
    """Opens a variable scope; ``with js.variable_scope("n1") as scope: ...``.

    The arguments are TF1's, in TF1's order, so ported calls such as
    ``variable_scope(scope, "dense", [inputs])`` run unchanged (``values`` is
    accepted and ignored).

    Args:
      name_or_scope: A name (``"n1"``, ``"a/b"``), a captured `VariableScope` to
        re-enter exactly, or None together with ``default_name``.
      default_name: Used when ``name_or_scope`` is None: the first of
        ``default_name``, ``default_name_1``, ... not opened yet under the parent.
      values: Ignored (TF1 used it to pick a graph).
      initializer: Default initializer for `get_variable` inside.
      regularizer: Default regularizer for `get_variable` inside.
      caching_device: Only None (TF1's default) is accepted.
      partitioner: Only None is accepted.
      custom_getter: ``getter(next_getter, name, *args, **kwargs)`` wrapping every
        `get_variable` inside; nested getters run inner first.
      reuse: None or False (inherit), True, or `js.AUTO_REUSE`.
      dtype: Default dtype for `get_variable` inside.
      use_resource: Only None or True is accepted.
      constraint: Only None is accepted.
      auxiliary_name_scope: Whether to also open a name scope (TF1's default True).

    Raises:
      TypeError: Neither ``name_or_scope`` nor ``default_name`` is given.
      ScopeArgumentError: ``default_name`` with ``reuse=True`` or AUTO_REUSE.
      ReuseFlagError: ``reuse`` is not None, True, False or AUTO_REUSE.
      InvalidNameError: The name does not match the allowed pattern (checked
        when the scope is entered, as in TF1).

    Example:
      >>> import jscope as js
      >>> with js.variable_scope("outer"):
      ...     with js.variable_scope("inner") as scope:
      ...         print(scope.name, scope.reuse)
      outer/inner False
    """

    __slots__ = (
        "_args",
        "_frame",
        "_saved",
        "_new",
        "_saved_counts",
    )
    __module__ = "jscope"

    def __init__(
        self,
        name_or_scope: str | VariableScope | None,
        default_name: str | None = None,
        values: Any = None,
        initializer: Any = None,
        regularizer: Any = None,
        caching_device: Any = None,
        partitioner: Any = None,
        custom_getter: Any = None,
        reuse: Any = None,
        dtype: Any = None,
        use_resource: Any = None,
        constraint: Any = None,
        auxiliary_name_scope: bool = True,
    ):
        if not (
            reuse is None or reuse is False or reuse is True or reuse is AUTO_REUSE
        ):
            check_reuse(reuse)  # raises
        # Names are checked on entry (`__enter__`), as TF1 checks them.
        if type(name_or_scope) is str:
            pass  # the common case
        elif name_or_scope is None:
            if default_name is None:
                raise errors.ArgumentTypeError(
                    "variable_scope needs name_or_scope or default_name; got "
                    "neither. Pass a name, e.g. variable_scope('layer'), or a "
                    "default_name."
                )
            if reuse is True or reuse is AUTO_REUSE:
                raise errors.ScopeArgumentError(
                    f"default_name ({default_name!r}) cannot be used without a "
                    f"name_or_scope when reuse={reuse!r}: a default name is always "
                    "a new scope, so there is nothing to reuse. Pass the scope's "
                    "name instead."
                )
        elif not isinstance(name_or_scope, str | VariableScope):
            raise errors.ArgumentTypeError(
                "name_or_scope must be a str, a VariableScope or None, got "
                f"{type(name_or_scope).__name__}: {name_or_scope!r}. Pass the "
                "scope's name, e.g. variable_scope('layer'), or a scope object "
                "captured with `with variable_scope(...) as scope`."
            )
        if not (
            caching_device is None
            and partitioner is None
            and constraint is None
            and (use_resource is None or use_resource is True)
        ):
            for arg, value in (
                ("caching_device", caching_device),
                ("partitioner", partitioner),
                ("constraint", constraint),
            ):
                if value is not None:
                    _unsupported(arg, value)
            if use_resource not in (None, True):
                _unsupported("use_resource", use_resource)
        self._saved_counts = None
        self._args = (
            name_or_scope,
            default_name,
            initializer,
            regularizer,
            custom_getter,
            reuse,
            dtype,
            auxiliary_name_scope,
        )

    def __enter__(self) -> VariableScope:
        (obj, default, init, reg, getter, reuse, dtype, aux) = self._args
        frame = peek()
        if frame is None:
            frame = current()
        plan = frame.plan_mode
        if plan is not None:  # an eager apply's plan (`plans`): a match replays inline
            # The event: (kind, name, reuse, fields, name scope, index, next).
            if (
                (event := plan.next)[0] is PLAN_ENTER
                and obj == event[1]
                and reuse is event[2]
                and aux is True
                and default is init is reg is getter is dtype is None
            ):
                plan.next = event[6]
                self._frame = frame
                self._saved = (frame.scope, frame.name_scope)
                new = self._new = frame.scope = _new(VariableScope)
                (  # the recorded fields, in `VariableScope.__slots__` order
                    new._reuse,
                    new._name,
                    new._initializer,
                    new._regularizer,
                    new._dtype,
                    new._custom_getter,
                    new._original_name_scope,
                    new._plain,
                ) = event[3]
                frame.name_scope = event[4]
                return new
            return plan.enter(self, frame)
        # Names are checked here, not when the object is made: TF1 checks them
        # on entry, and a replayed entry (above) needs no check, its name equal
        # to the checked one it recorded.
        if type(obj) is str:
            if obj not in VALID_SCOPES:
                _check_scope_name(obj)
        elif obj is None:
            _check_scope_name(default)
        elif not isinstance(obj, VariableScope):  # a str subclass
            _check_scope_name(obj)
        parent = frame.scope
        outer = frame.name_scope
        self._frame = frame
        self._saved = (parent, outer)
        if isinstance(obj, VariableScope):
            return self._enter_by_object(frame, obj)
        # TF1 names the name scope of a default-named scope after the default
        # name, uniquified on its own.
        ns_name = obj
        if obj is None:
            ns_name = default
            obj = _unique_default(frame, parent._name, default)  # pyright: ignore[reportArgumentType]
        prefix = parent._name
        name = f"{prefix}/{obj}" if prefix else obj
        if init is None and reg is None and dtype is None and getter is None:
            # The common case: every default inherited, and whether they are plain
            # (the parent's flag; only a new reuse=True can change it).
            init = parent._initializer
            reg = parent._regularizer
            dtype = parent._dtype
            getter = parent._custom_getter
            plain = parent._plain
        else:
            if init is None:
                init = parent._initializer
            if reg is None:
                reg = parent._regularizer
            if dtype is None:
                dtype = parent._dtype
            if parent._custom_getter is not None:
                getter = wrap_getter(parent._custom_getter, getter)
            plain = None  # `_is_plain` of the new scope, below
        if aux:
            name_scope = f"{outer}/{ns_name}" if outer else ns_name
            taken = frame.used_names.counts  # `Uniquifier.unique`, inline
            if name_scope in taken or name_scope in frame.kind_of:
                name_scope = frame.used_names.unique(name_scope)
            else:
                taken[name_scope] = 1  # pyright: ignore[reportArgumentType]
            original = name_scope + "/"  # pyright: ignore[reportOptionalOperand]
        else:
            name_scope = outer
            original = outer + "/" if outer else ""
        # Count the opening: an int in the parent's children until a scope
        # opens inside this one (`Counts`).
        if "/" in name:
            parent_path, leaf = name.rsplit("/", 1)
            held = frame.scope_counts.node(parent_path).children
        else:
            held, leaf = frame.scope_counts.children, name
        count = held.get(leaf)
        if count is None:
            held[leaf] = 1
        elif type(count) is int:
            held[leaf] = count + 1
        else:
            count.count += 1  # pyright: ignore[reportAttributeAccessIssue] (a node)
        # A new VariableScope without a Python call: the flag is checked already.
        new = self._new = frame.scope = _new(VariableScope)
        new._reuse = reuse = reuse if reuse else parent._reuse
        new._name = name
        new._initializer = init
        new._regularizer = reg
        new._dtype = dtype
        new._custom_getter = getter
        new._original_name_scope = original
        new._plain = _is_plain(new) if plain is None else plain and reuse is not True
        frame.name_scope = name_scope  # pyright: ignore[reportAttributeAccessIssue]
        return new

    def _enter_by_object(self, frame: context.Frame, obj: VariableScope) -> Any:
        (_, _, init, reg, getter, reuse, dtype, aux) = self._args
        name = obj._name
        # TF1: a new name scope named after the scope's last component,
        # uniquified where it is entered; the object keeps its original one.
        last = name.rsplit("/", 1)[-1]
        if aux and last:
            name_scope = frame.used_names.unique(names.join(frame.name_scope, last))
        else:
            name_scope = frame.name_scope
        counts = frame.scope_counts
        counts.node(name).count += 1
        # TF1's `_pure_variable_scope`: entering by object snapshots the whole
        # count store, just after counting this opening.
        self._saved_counts = counts.copy()
        new = VariableScope(
            reuse if reuse else obj._reuse,
            name,
            obj._initializer if init is None else init,
            obj._regularizer if reg is None else reg,
            obj._dtype if dtype is None else dtype,
            wrap_getter(obj._custom_getter, getter),
            obj._original_name_scope,
        )
        self._new = frame.scope = new
        frame.name_scope = name_scope
        return new

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        frame: context.Frame = self._frame  # pyright: ignore[reportAssignmentType] (set at entry)
        plan = frame.plan_mode
        if plan is not None:  # an eager apply's plan (`plans`): a match replays inline
            # The event: (kind, index, next).
            if (event := plan.next)[0] is PLAN_EXIT and self._new is frame.scope:
                plan.next = event[2]
                frame.scope, frame.name_scope = self._saved
                self._frame = None
                return None
            return plan.exit(self, frame, (exc_type, exc, tb))
        frame.scope, frame.name_scope = self._saved
        saved = self._saved_counts
        if saved is None:
            # Leaving a scope entered by name forgets the counts below it (TF1's
            # `close_variable_subscopes`). It is found by path in the store now
            # current (a scope entered by object inside may have put back
            # another copy); a count without a node has nothing below it.
            name = self._new._name
            if "/" in name:
                node = frame.scope_counts.find(name)
            else:
                node = frame.scope_counts.children.get(name)
            if type(node) is context.Counts and node.children:
                node.children = {}
        else:
            # Leaving one entered by object puts the whole store back as it was
            # just after entry: every scope's counts, not only those below it.
            self._saved_counts = None
            frame.scope_counts = saved
        self._frame = None  # keeps no run's values alive after the block


def _check_scope_name(name: Any) -> None:
    """Checks a scope name (`variable_scope.__enter__` asks the cache first).

    Raises:
      InvalidNameError: As `_invalid_scope_name`.
      ArgumentTypeError: ``name`` is not a str.
    """
    try:
        if type(name) is str:
            names.valid_scope(name)
        else:
            names.validate(name, "variable scope")
    except errors.InvalidNameError:
        _invalid_scope_name(name)  # raises


def _invalid_scope_name(name: Any) -> None:
    """Raises the `InvalidNameError` of a scope name, with its full path.

    Components are valid or not wherever the scope opens; the message shows
    the full path below the current scope.
    """
    names.validate(names.join(current().scope.name, name), "variable scope")
    names.validate(name, "variable scope")  # pragma: no cover - raised above


def _unique_default(frame: context.Frame, parent: str, default: str) -> str:
    node = frame.scope_counts.node(parent)
    name, i = default, 1
    while node.count_of(name):
        name = f"{default}_{i}"
        i += 1
    return name


def _unsupported(arg: str, value: Any) -> None:
    raise errors.UnsupportedArgumentError(
        f"variable_scope({arg}={value!r}) is not supported: "
        f"{_UNSUPPORTED_SCOPE_ARGS[arg]}. Leave {arg} at its default."
    )


def current() -> context.Frame:
    """Returns this thread's frame, creating the outside-of-run one if needed."""
    frame = context.peek()
    if frame is None:
        frame = context.Frame(is_run=False, scope=VariableScope(False, ""))
        context.install(frame)
    return frame


def get_variable_scope() -> VariableScope:
    """Returns the variable scope open at this point (the root has name ``""``).

    Example:
      >>> import jscope as js
      >>> js.get_variable_scope().name
      ''
    """
    return current().scope
