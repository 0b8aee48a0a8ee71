"""Exception classes raised by jscope.

Every class subclasses the builtin exception that TensorFlow 1 raised for the same
mistake (`ValueError` for reuse, shape, name and dtype-on-reuse errors; `TypeError`
for wrong argument types, assignment dtypes and unrepresentable initializer values),
so ported ``except ValueError:`` code keeps working. Messages name the full variable
path, what was expected, what was found and how to fix it. Errors keep their class,
message and attributes when pickled.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentTypeError",
    "AssignmentDtypeError",
    "AssignmentShapeError",
    "AssignmentTargetError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointLockError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointTypeError",
    "CheckpointWriteError",
    "DtypeMismatchError",
    "InitialValueError",
    "InitializerArgumentError",
    "InitializerError",
    "InvalidDtypeError",
    "InvalidNameError",
    "InvalidShapeError",
    "JaxTransformError",
    "JscopeError",
    "LeafTypeError",
    "LayerArgumentError",
    "LayerTypeError",
    "LiftError",
    "MissingRngError",
    "NotInRunError",
    "NotMutableError",
    "PathConflictError",
    "ReadOnlyAttributeError",
    "ReuseFlagError",
    "RngTypeError",
    "ScopeArgumentError",
    "ShapeMismatchError",
    "ShapeTypeError",
    "ShardingError",
    "UninitializedVariableError",
    "UnknownCollectionWarning",
    "UnknownArgumentError",
    "UnsupportedArgumentError",
    "VariableExistsError",
    "VariableNotFoundError",
]


class JscopeError(Exception):
    """Base class of every jscope error.

    Attributes:
      path: The full path of the variable or scope concerned, or None.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (str(self), self.path))


class VariableExistsError(JscopeError, ValueError):
    """A variable is created at a path that already holds one ("already exists")."""


class VariableNotFoundError(JscopeError, ValueError):
    """A variable is reused at a path that holds none ("does not exist")."""


class ShapeMismatchError(JscopeError, ValueError):
    """A shared or stored variable's shape differs from the requested one."""


class DtypeMismatchError(JscopeError, ValueError):
    """A shared or stored variable's dtype differs from the requested one."""


class InvalidNameError(JscopeError, ValueError):
    """A variable or scope name does not match the allowed pattern."""


class PathConflictError(JscopeError, ValueError):
    """A variable ``k`` and a variable ``k/x`` would both exist in one tree."""


class ReuseFlagError(JscopeError, ValueError):
    """The reuse argument is not True, False, None or AUTO_REUSE."""


class ScopeArgumentError(JscopeError, ValueError):
    """A variable_scope was opened with a contradictory set of arguments."""


class UninitializedVariableError(JscopeError, ValueError):
    """At apply, a variable the function asks for is missing from the tree."""


class InitializerError(JscopeError, TypeError):
    """An initializer cannot produce a value of the variable's dtype."""


class InitializerArgumentError(JscopeError, ValueError):
    """An initializer got arguments it cannot honour, or a required one is missing."""


class UnsupportedArgumentError(JscopeError, ValueError):
    """A TF1 keyword argument has a value that jscope does not support."""


class ArgumentTypeError(JscopeError, TypeError):
    """An argument has the wrong type, as TF1's ``TypeError``s.

    For example a variable name that is not a str, a variable tree that is not a
    dict, or a ``variable_scope`` given neither a name nor a default name.
    """


class LayerArgumentError(JscopeError, ValueError):
    """A layer got an argument or input value it cannot use.

    For example a size that is not positive, an unknown padding, inputs of the
    wrong rank, or a rate outside ``[0, 1)``. ``path`` is the layer's scope path
    (``dense_1``, ``net/conv2d``) and the message starts ``Layer <path>:``.
    """


class LayerTypeError(ArgumentTypeError):
    """A layer argument or input has the wrong type.

    For example a size that is not an int, integer inputs to a layer that needs
    floating point, or a traced ``training`` flag. ``path`` is the layer's scope
    path and the message starts ``Layer <path>:``.
    """


class ShardingError(JscopeError, ValueError):
    """A variable's sharding cannot be what the rules or its axes ask.

    A spec of the wrong rank, a dimension a mesh axis does not divide, an unknown
    mesh or logical axis, one mesh axis used twice, a ``paths`` regex that does
    not compile, ``axes=`` of the wrong length or contradicting the axes the
    variable was created with. The message names the variable path, its shape,
    the spec and the mesh (axis names and sizes).
    """


class NotMutableError(JscopeError, ValueError):
    """A variable is assigned in a collection that is not mutable in this run."""


class AssignmentShapeError(JscopeError, ValueError):
    """An assigned value has a different shape from the variable."""


class AssignmentDtypeError(JscopeError, TypeError):
    """An assigned value has a different dtype from the variable."""


class AssignmentTargetError(JscopeError, TypeError):
    """The target of an assignment is not a variable of this run."""


class MissingRngError(JscopeError, ValueError):
    """A random key is asked for a stream that the run was not given."""


class NotInRunError(JscopeError, RuntimeError):
    """A variable is asked for outside `js.init` / `js.apply`."""


class JaxTransformError(JscopeError, ValueError):
    """A variable is created, read or assigned inside a plain JAX transform.

    Build one with `JaxTransformError.inside_plain_transform`, which holds the one
    wording of this mistake for each of the three actions.
    """

    # action: (the transforms that refuse it, what would go wrong, how to fix it)
    _ACTIONS = {
        "created": (
            "jax.vmap, jax.lax.scan, jax.checkpoint, jax.jit, ...",
            "it would be silently shared or duplicated",
            "Use jscope's lifted transforms (js.scan, js.vmap, js.remat, js.cond, "
            "js.while_loop), or create the variable outside the transform and read "
            "it inside.",
        ),
        "read": (
            "a staged one: jax.jit, jax.checkpoint, jax.lax.scan, jax.lax.cond, ...",
            "JAX caches the traced function, so the variable's value would be baked "
            "in and reused by later runs",
            "Read the variable before the transform and pass it in as an argument, "
            "or use jscope's lifted transforms (js.remat, js.scan, js.cond, "
            "js.while_loop).",
        ),
        "assigned": (
            "jax.vmap, jax.jit, jax.lax.scan, jax.checkpoint, ...",
            "the new value would be a tracer of that transform and leak out of it",
            "Return the value from the transform and assign it outside, or use "
            "jscope's lifted transforms (js.scan, js.vmap, js.remat).",
        ),
    }

    @classmethod
    def inside_plain_transform(
        cls, path: str, action: str, what: str = "Variable"
    ) -> JaxTransformError:
        """The error for ``what`` at ``path`` being ``action`` in a plain transform.

        Args:
          path: The variable's full path.
          action: ``"created"``, ``"read"`` or ``"assigned"``.
          what: How the variable is named in the message (``"js.Variable"``).

        Example:
          >>> e = JaxTransformError.inside_plain_transform("n1/w", "assigned")
          >>> e.path, str(e)[:40]
          ('n1/w', 'Variable n1/w is assigned inside a plain')
        """
        transforms, why, fix = cls._ACTIONS[action]
        return cls(
            f"{what} {path} is {action} inside a plain JAX transform ({transforms}) "
            f"opened within the run: {why}. {fix}",
            path,
        )


class LiftError(JscopeError, ValueError):
    """A lifted transform (js.scan, js.vmap, ...) was misused.

    For example a bad ``variable_axes``, a body that creates different variables
    on different passes, or branches of `js.cond` that use different variables.
    """


class RngTypeError(JscopeError, TypeError):
    """The rng given to `js.init` or `js.apply` is not a JAX key (an int, say)."""


class UnknownCollectionWarning(JscopeError, UserWarning):
    """`js.apply`'s ``mutable`` names a collection the tree lacks, likely misspelt.

    Nothing can be assigned in such a collection (apply creates no variable),
    so nothing comes back for it. Only names close to a collection the tree
    has are reported (``"stat"`` for ``"state"``).
    """


class InvalidShapeError(JscopeError, ValueError):
    """A new variable's shape is missing, not fully defined or has a negative size."""


class ShapeTypeError(JscopeError, TypeError):
    """A shape is not a sequence of ints (None for any size on reuse)."""


class InvalidDtypeError(JscopeError, TypeError):
    """A dtype is not understood, or is not a numeric dtype a jax.Array can hold."""


class InitialValueError(JscopeError, ValueError):
    """A value given as initializer is ragged or not numeric (None, a string)."""


class ReadOnlyAttributeError(JscopeError, AttributeError):
    """A `VariableScope` field was assigned: as in TF1, it changes by its setter."""


class LeafTypeError(JscopeError, TypeError):
    """A leaf of the tree given to `js.apply` is not an array (a float, list, None)."""


class UnknownArgumentError(JscopeError, TypeError):
    """A function got a keyword argument it does not know (Python's TypeError)."""


class CheckpointError(JscopeError, ValueError):
    """A checkpoint cannot be saved or restored as asked."""


class CheckpointNotFoundError(CheckpointError):
    """A path given as a checkpoint is None, missing, or not a checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """Variables are missing from a checkpoint or differ in shape or dtype."""


class CheckpointTypeError(CheckpointError, TypeError):
    """A `Saver` argument, or a value to save or restore into, has the wrong type."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's files do not hold what was saved.

    A checksum mismatch; a truncated, emptied or missing file; metadata that
    cannot be read.

    Attributes:
      key: The checkpoint key of the variable concerned, or None.
      file: The path of the file concerned, or None.
    """

    def __init__(self, message: str, key: str | None = None, file: str | None = None):
        super().__init__(message, key)
        self.key = key
        self.file = file

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (str(self), self.key, self.file))


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint cannot be written: the disk is full, read-only, or forbidden.

    Also an `OSError`, with the underlying ``errno`` and ``filename``.
    """

    def __init__(self, message: str, path: str | None = None, errno: int | None = None):
        OSError.__init__(self, errno, message, path)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.message, self.path, self.errno))


class CheckpointLockError(CheckpointError):
    """Another process holds the lock of a checkpoint directory (it is saving there).

    Attributes:
      holder: What the lock file says of its holder (``pid``, ``host``), or None.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        holder: dict[str, Any] | None = None,
    ):
        super().__init__(message, path)
        self.holder = holder

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (str(self), self.path, self.holder))
