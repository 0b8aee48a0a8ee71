"""The one per-thread context: the frame of the run in progress.

A *frame* records everything one `init` or `apply` knows: the variables it has
seen, the scope and name-scope stacks, default-name counters and rng counters.
Outside a run, a lighter frame records only scopes, so TF1-style code can capture
a `VariableScope` while it builds model objects. The `ContextVar` below is the only
global in jscope; each thread and each asyncio task sees its own value.
"""

from __future__ import annotations

import contextvars
from typing import Any

from jscope import errors
from jscope._src import names

try:  # jax >= 0.7
    from jax.extend.core import get_opaque_trace_state as _opaque_trace_state
except ImportError:  # pragma: no cover - older jax
    from jax import core as _jax_core

    def _opaque_trace_state():
        return _jax_core.get_opaque_trace_state(None)


try:  # The trace object itself: an identity check is the cheapest comparison.
    from jax._src.core import trace_ctx as _trace_ctx

    def trace_state() -> Any:
        """The current JAX trace, compared by identity or equality."""
        return _trace_ctx.trace

except ImportError:  # pragma: no cover - other jax versions
    trace_state = _opaque_trace_state


def same_trace(a: Any, b: Any) -> bool:
    """Whether two values of `trace_state` denote the same JAX trace."""
    return a is b or a == b


_FRAME: contextvars.ContextVar[Frame | None] = contextvars.ContextVar(
    "jscope_frame", default=None
)

GET = 1  # a path created by get_variable
VAR = 2  # a path created by Variable


class Counts:
    """TF1's per-scope open counts, kept as a tree keyed by path component."""

    __slots__ = ("count", "children")

    def __init__(self):
        self.count = 0
        self.children: dict[str, Counts] = {}

    def node(self, path: str) -> Counts:
        """Returns the node of ``path`` (``""`` is this node), creating it."""
        node = self
        if path:
            for part in path.split("/"):
                child = node.children.get(part)
                if child is None:
                    child = node.children[part] = Counts()
                node = child
        return node

    def assign_from(self, other: Counts) -> None:
        """Makes this tree equal to ``other`` in place, keeping existing nodes."""
        self.count = other.count
        old = self.children
        new = {}
        for key, child in other.children.items():
            node = old.get(key)
            if node is None:
                node = Counts()
            node.assign_from(child)
            new[key] = node
        self.children = new

    def copy(self) -> Counts:
        """A deep copy."""
        new = Counts()
        new.count = self.count
        new.children = {k: v.copy() for k, v in self.children.items()}
        return new


class Frame:
    """What one run (or the code outside any run) knows.

    Attributes are plain and public to the private modules of jscope only.
    """

    __slots__ = (
        "is_run",
        "initializing",
        "alive",
        "rng",
        "rngs",
        "source",
        "mutable",
        "scope",
        "name_scope",
        "names",
        "counts",
        "kinds",
        "values",
        "collection_of",
        "created",
        "inner",
        "assigned",
        "returned",
        "regularizers",
        "rng_counts",
        "templates",
        "trace_state",
        "lift",
    )

    def __init__(
        self,
        *,
        is_run: bool,
        initializing: bool = False,
        rng: Any = None,
        rngs: Any = None,
        source: dict[str, dict[str, Any]] | None = None,
        mutable: frozenset[str] | bool = False,
    ):
        from jscope._src.scope import VariableScope  # noqa: PLC0415 (cycle)

        self.is_run = is_run
        self.initializing = initializing
        self.alive = True
        self.rng = rng
        self.rngs = rngs
        self.source = source
        self.mutable = mutable
        self.scope = VariableScope(False, "")
        self.name_scope = ""
        self.names = names.Uniquifier()
        self.counts = Counts()
        self.kinds: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self.collection_of: dict[str, str] = {}
        self.created: dict[str, Any] = {}
        self.inner: set[str] = set()
        self.assigned: dict[str, Any] = {}
        self.returned: dict[int, tuple[Any, str | None]] = {}
        self.regularizers: list[tuple[str, Any]] = []
        self.rng_counts: dict[tuple[str, str], int] = {}
        self.templates: dict[int, Any] = {}
        self.trace_state = trace_state() if is_run else None
        self.lift = None  # set in the bodies of lifted transforms

    def close(self) -> None:
        """Ends the run: drops every value so no tracer outlives it."""
        self.alive = False
        self.source = None
        self.values = {}
        self.created = {}
        self.assigned = {}
        self.returned = {}
        self.regularizers = []
        self.templates = {}
        self.rng = None
        self.rngs = None


def is_staged_trace_of_its_own(run_state: Any) -> bool:
    """Whether the current trace is a staging (jaxpr) trace other than the run's.

    Such traces (``jax.jit``, ``jax.checkpoint``, ``jax.lax.scan``, ...) are cached
    by JAX. Batching and differentiation traces are not, and return False.
    """
    trace = trace_state()
    ref = getattr(trace, "_trace_ref", None)  # an opaque state wraps a weakref
    if callable(ref):
        trace = ref()
    if trace is None or same_trace(trace, run_state):
        return False
    return "Jaxpr" in type(trace).__name__


def current() -> Frame:
    """Returns this thread's frame, creating the outside-of-run one if needed."""
    frame = _FRAME.get()
    if frame is None:
        frame = Frame(is_run=False)
        _FRAME.set(frame)
    return frame


def current_run(what: str) -> Frame:
    """Returns the frame of the run in progress, or raises `NotInRunError`."""
    frame = _FRAME.get()
    if frame is None or not frame.is_run:
        raise errors.NotInRunError(
            f"{what} was called outside a run. Call it inside a function run by "
            "js.init(fn, rng, ...) or js.apply(fn, variables, ...) (or "
            "js.transform(fn).init/.apply): variables only exist while a run is in "
            "progress."
        )
    return frame


def enter(frame: Frame) -> contextvars.Token:
    """Makes ``frame`` current; give the token to `leave`."""
    return _FRAME.set(frame)


def leave(token: contextvars.Token) -> None:
    """Restores the frame that was current before `enter`."""
    _FRAME.reset(token)


def in_run() -> Frame | None:
    """The frame of the run in progress, or None (no error)."""
    frame = _FRAME.get()
    return frame if frame is not None and frame.is_run else None
