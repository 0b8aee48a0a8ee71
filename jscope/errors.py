"""Exception classes raised by jscope.

Every class subclasses the builtin exception that TensorFlow 1 raised for the same
mistake (`ValueError` for reuse, shape, name and dtype-on-reuse errors; `TypeError`
for wrong argument types, assignment dtypes and unrepresentable initializer values),
so ported ``except ValueError:`` code keeps working. Messages name the full variable
path, what was expected, what was found and how to fix it. Errors keep their class,
message and attributes when pickled.
"""

from __future__ import annotations

__all__ = [
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
    "InitializerArgumentError",
    "InitializerError",
    "InvalidNameError",
    "JaxTransformError",
    "JscopeError",
    "LiftError",
    "MissingRngError",
    "NotInRunError",
    "NotMutableError",
    "PathConflictError",
    "ReuseFlagError",
    "ScopeArgumentError",
    "ShapeMismatchError",
    "UninitializedVariableError",
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

    def __reduce__(self):
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
    """A variable is created inside a plain JAX transform opened within a run."""


class LiftError(JscopeError, ValueError):
    """A lifted transform (js.scan, js.vmap, ...) was misused.

    For example a bad ``variable_axes``, a body that creates different variables
    on different passes, or branches of `js.cond` that use different variables.
    """


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

    def __reduce__(self):
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

    def __reduce__(self):
        return (type(self), (self.message, self.path, self.errno))


class CheckpointLockError(CheckpointError):
    """Another process holds the lock of a checkpoint directory (it is saving there).

    Attributes:
      holder: What the lock file says of its holder (``pid``, ``host``), or None.
    """

    def __init__(
        self, message: str, path: str | None = None, holder: dict | None = None
    ):
        super().__init__(message, path)
        self.holder = holder

    def __reduce__(self):
        return (type(self), (str(self), self.path, self.holder))
