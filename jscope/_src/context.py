"""The one per-thread context: the frame of the run in progress.

A *frame* records everything one `init` or `apply` knows: the TF1 rule state
(scopes, names, counters, the paths seen) and the run's values. Outside a run,
a lighter frame records only scopes, so TF1-style code can capture a
`VariableScope` while it builds model objects. The `ContextVar` below is the
only global in jscope; each thread and each asyncio task sees its own value.

The frame owns its life: `Frame.entered` makes it current for a block, and
the body of a lifted transform runs in a child made by `Frame.fork`, cut from
its trace by `Frame.detach` and taken back by `Frame.adopt`. `Crossing` is
what a frame's ``lift`` offers to `get_variable` inside such a body.

Imports: `errors`, `names`, `jax_compat`. The root `VariableScope` of a frame
is passed in by its maker (`scope.current`, `run`), so this module does not
import `scope`. Hot path: `peek` and the slot reads of `get_variable`.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable
from typing import Any, Literal, Protocol

from jscope import errors
from jscope._src import names
from jscope._src.jax_compat import trace_state

_FRAME: contextvars.ContextVar[Frame | None] = contextvars.ContextVar(
    "jscope_frame", default=None
)

#: This thread's frame, or None: nothing is created (the `get_variable` path).
peek = _FRAME.get
#: ``token = make_current(frame)`` ... ``restore_current(token)``: a frame made
#: current for a few calls (`plans` runs events on a shadow frame so).
make_current = _FRAME.set
restore_current = _FRAME.reset


def install(frame: Frame) -> None:
    """Makes ``frame`` this thread's frame for good (the outside-of-run frame)."""
    _FRAME.set(frame)


class Kind(enum.Enum):
    """What created a path in a run: TF1 keeps the two kinds apart."""

    GET = 1  # `get_variable`: shared by name under the reuse rules
    VAR = 2  # `Variable`: always new, invisible to `get_variable`


GET = Kind.GET
VAR = Kind.VAR


class Counts:
    """TF1's per-scope open counts, kept as a tree keyed by path component.

    A child is a `Counts` node, or just its count (an int) while nothing has
    been opened below it: `scope.variable_scope.__enter__` counts a scope by
    writing an int into its parent's children, and makes no node until a scope
    opens inside it (`node`).
    """

    __slots__ = ("count", "children")

    def __init__(self, count: int = 0):
        self.count = count
        self.children: dict[str, Counts | int] = {}

    def node(self, path: str) -> Counts:
        """Returns the node of ``path`` (``""`` is this node), creating it."""
        node = self
        if path:
            for part in path.split("/"):
                child = node.children.get(part)
                if not isinstance(child, Counts):  # None or a count
                    child = node.children[part] = Counts(child or 0)
                node = child
        return node

    def find(self, path: str) -> Counts | int | None:
        """Returns the child at ``path`` (a node or a count), or None; makes none."""
        node: Counts | int | None = self
        for part in path.split("/"):
            if type(node) is not Counts:
                return None
            node = node.children.get(part)
        return node

    def count_of(self, path: str) -> int:
        """How often the scope at ``path`` (below this node) was opened."""
        found = self.find(path)
        return found.count if isinstance(found, Counts) else (found or 0)

    def assign_from(self, other: Counts) -> None:
        """Makes this tree equal to ``other`` in place, keeping existing nodes."""
        self.count = other.count
        old = self.children
        new: dict[str, Counts | int] = {}
        for key, child in other.children.items():
            if type(child) is not Counts:
                new[key] = child
                continue
            node = old.get(key)
            if type(node) is not Counts:
                node = Counts()
            node.assign_from(child)
            new[key] = node
        self.children = new

    def copy(self) -> Counts:
        """A deep copy."""
        new = Counts(self.count)
        new.children = {
            k: v.copy() if type(v) is Counts else v for k, v in self.children.items()
        }
        return new


class Crossing(Protocol):
    """How variables cross a lifted transform: what ``frame.lift`` offers.

    Inside the body of `js.scan`, `js.vmap`, ... the frame's ``lift`` is one of
    these (`jscope._src.lift.Lift`); at the root of `js.init`'s shape-only
    pass, a `jscope._src.coldinit.Recorder`; elsewhere it is None.
    `get_variable`, `Variable` and `next_rng_key` call only the two methods
    below.
    """

    def create(
        self,
        frame: Frame,
        path: str,
        coll: str,
        make: Callable[[Any], Any] | None,
        keyed: bool,
    ) -> Any:
        """The value a variable created in the body starts with.

        Args:
          frame: The body's frame.
          path: The variable's full path.
          coll: Its collection.
          make: ``make(key) -> array``, its initial value from its key.
          keyed: Whether ``make`` uses its key (else it gets None).
        """

    def fold_rng(self, key: Any, stream: str) -> Any:
        """The key of ``stream`` for this pass of the body (split or not)."""


#: The rule state a plan does not keep while it runs (`plans`): unset slots of
#: a `PlannedFrame`, set from the events so far when anything touches them.
#: The values read so far are among them: a replayed read takes its array from
#: the given tree every time, shared or not.
LAZY = (
    "kind_of",
    "used_names",
    "scope_counts",
    "prefixes",
    "collection_of",
    "values",
)


#: The kinds of a plan's events (`plans`): the first item of each event. A
#: replayed event's last two items are its index in the plan and the next event
#: (the last one's: the plan's end, of kind `PLAN_END`).
PLAN_ENTER = "enter"
PLAN_READ = "read"
PLAN_EXIT = "exit"
PLAN_END = "end"


def end_plan() -> None:
    """Ends the plan of the run in progress, if any (`plans`).

    For code that changes what later events see without touching the rule
    state: the setters of a `VariableScope`, a name scope, a scope swapped in.
    """
    frame = _FRAME.get()
    if frame is not None and frame.plan_mode is not None:
        frame.plan_mode.end(frame)


class Frame:
    """What one run (or the code outside any run) knows.

    Attributes are plain and public to the private modules of jscope only. A
    new slot: give it a value in `__init__`, say in `fork` whether a body's
    child copies it, and in `detach`/`close` whether it is dropped.
    """

    __slots__ = (
        # -- what kind of frame; fixed when it is made
        "is_run",  # a run (init/apply), or the scope record outside any run
        "initializing",  # js.init (True) or js.apply (False)
        "mutable",  # collections whose assignments apply returns; True for all
        "trace_state",  # the JAX trace the run (or body) runs under
        "get_variable",  # the run's js.get_variable, for VariableScope.get_variable
        #                  (scope.py sits below variables.py and cannot import it)
        "rules",  # the ShardingRules in force (js.init/apply rules=), or None
        # -- rule state: what TF1's rules consult; a lifted body's child starts
        #    from a copy, and the run adopts the child's after the transform
        "scope",  # the VariableScope open now (root: name "")
        "name_scope",  # the name scope open now, without trailing "/"
        "used_names",  # names.Uniquifier: name scopes and variable paths taken
        #                (get_variable paths through kind_of, which it reads)
        "scope_counts",  # Counts: how often each variable scope was opened
        "kind_of",  # path -> Kind, for every variable of the run so far
        "collection_of",  # path -> the collection holding it
        "axes_of",  # path -> its logical axes (tuple), for paths given axes=
        "prefixes",  # every proper prefix of those paths ("a" for "a/w"): no
        #              variable may be created at one
        "rng_counts",  # (stream, scope) -> keys drawn so far by next_rng_key
        "templates",  # id(template) -> (template, its VariableScope)
        # -- run values: arrays of this run's trace; dropped when it ends
        "alive",  # False once closed or detached: handles then refuse use
        "rng",  # init: the params key every variable key derives from
        "rngs",  # the rngs given: one key or {stream: key}
        "given_tree",  # apply: {collection: {path: array}} of the given tree
        "values",  # path -> current value (after assignments)
        "created",  # init: path -> (collection, initial value), creation order
        "assigned",  # apply: path -> assigned value (what apply returns)
        "read_log",  # (array, path) each read or assignment returned, in order
        "path_of_array",  # id(array) -> (array, path or None if ambiguous),
        # built from `read_log` only when `js.assign` asks (access.returned_path)
        "given_by_id",  # apply: id(leaf) -> [(leaf, collection, path)] of the
        # given tree, or None until `js.assign` first asks (access._given_path)
        "regularizers",  # (path, regularizer) in creation order
        "lift",  # a Crossing inside a lifted transform's body, else None
        "plan_mode",  # an eager js.apply recording or replaying a plan, else None
        #               (`plans`): the `LAZY` slots are unset meanwhile
    )

    def __init__(
        self,
        *,
        is_run: bool,
        scope: Any,
        initializing: bool = False,
        rng: Any = None,
        rngs: Any = None,
        given_tree: dict[str, Any] | None = None,
        mutable: frozenset[str] | Literal[True] = frozenset(),
        get_variable: Callable[..., Any] | None = None,
        rules: Any = None,
    ):
        self.plan_mode: Any = None
        self.is_run = is_run
        self.initializing = initializing
        self.mutable: frozenset[str] | Literal[True] = mutable
        self.trace_state = trace_state() if is_run else None
        self.get_variable = get_variable
        self.rules = rules
        self.scope = scope
        self.name_scope = ""
        self.kind_of: dict[str, Kind] = {}
        # get_variable records a path in kind_of alone: the uniquifier reads it
        self.used_names = names.Uniquifier(self.kind_of, GET)
        self.scope_counts = Counts()
        self.collection_of: dict[str, str] = {}
        self.axes_of: dict[str, tuple] = {}
        self.prefixes: set[str] = set()
        self.rng_counts: dict[tuple[str, str], int] = {}
        self.templates: dict[int, Any] = {}
        self.alive = True
        self.rng = rng
        self.rngs = rngs
        self.given_tree = given_tree
        self.values: dict[str, Any] = {}
        self.created: dict[str, Any] = {}
        self.assigned: dict[str, Any] = {}
        self.read_log: list[tuple[Any, str]] = []
        self.path_of_array: dict[int, tuple[Any, str | None]] = {}
        self.given_by_id: dict[int, list[tuple[Any, str, str]]] | None = None
        self.regularizers: list[tuple[str, Any]] = []
        self.lift: Crossing | None = None

    def entered(self, *, on_exit: Callable[[], None] | None = None) -> _Entered:
        """``with frame.entered(on_exit=...):`` makes this frame current.

        Leaving the block restores the frame current before and then calls
        ``on_exit`` (`close` for a run, `detach` for a lifted body), also when
        the block raises.
        """
        return _Entered(self, on_exit)

    def fork(self, *, lift: Crossing, given_tree: Any, carried: dict) -> Frame:
        """A child frame for one pass of a lifted transform's body.

        It starts from a copy of this frame's rule state and values, traced
        under the current trace, with ``carried`` values over this frame's.

        Args:
          lift: How variables cross the transform.
          given_tree: The given tree as the body sees it (sliced, carried).
          carried: Values the body starts from instead of this frame's.
        """
        child = Frame(
            is_run=True,
            scope=self.scope,
            initializing=self.initializing,
            rng=self.rng,
            rngs=self.rngs,
            given_tree=given_tree,
            mutable=self.mutable,
            get_variable=self.get_variable,
            rules=self.rules,
        )
        child.name_scope = self.name_scope
        child.kind_of = dict(self.kind_of)
        child.used_names = self.used_names.copy(child.kind_of)
        child.scope_counts = self.scope_counts.copy()
        child.collection_of = dict(self.collection_of)
        child.axes_of = dict(self.axes_of)
        child.prefixes = set(self.prefixes)
        child.rng_counts = dict(self.rng_counts)
        child.templates = dict(self.templates)
        child.values = {**self.values, **carried}
        child.lift = lift
        return child

    def detach(self) -> None:
        """Drops a body's traced values, keeping its rule state for `adopt`.

        The child outlives the body's trace, so it must not keep the trace's
        values: no tracer may leak out of a run. Which paths were assigned is
        kept (without values), and so are the regularizers.
        """
        self.assigned = dict.fromkeys(self.assigned)
        self.values = {}
        self.given_tree = None
        self.read_log = []
        self.path_of_array = {}
        self.given_by_id = None
        self.created = {}
        self.rng = self.rngs = None
        self.lift = None
        self.trace_state = None
        self.alive = False

    def adopt(self, child: Frame) -> list[str]:
        """Makes a detached child's rule state this frame's.

        Afterwards names, counters and paths are as if the body had run here
        once. The values of the paths the body created are the caller's to set.

        Returns:
          The paths the body created, in creation order.
        """
        new = self.new_paths(child)
        self.scope_counts.assign_from(child.scope_counts)
        self.used_names = child.used_names.copy(self.kind_of)
        self.prefixes = child.prefixes
        self.rng_counts = child.rng_counts
        self.templates = child.templates
        axes_of = child.axes_of
        for path in new:
            self.kind_of[path] = child.kind_of[path]
            self.collection_of[path] = child.collection_of[path]
            if path in axes_of:
                self.axes_of[path] = axes_of[path]
        return new

    def new_paths(self, child: Frame) -> list[str]:
        """The paths ``child`` has and this frame has not, in creation order."""
        return [p for p in child.kind_of if p not in self.kind_of]

    def close(self) -> None:
        """Ends the run: drops every value so no tracer outlives it."""
        self.alive = False
        self.plan_mode = None  # a recorder's shadow holds the run's values
        self.given_tree = None
        self.values = {}
        self.created = {}
        self.assigned = {}
        self.read_log = []
        self.path_of_array = {}
        self.given_by_id = None
        self.regularizers = []
        self.templates = {}
        self.rng = None
        self.rngs = None


class PlannedFrame(Frame):
    """A frame while its run records or replays a plan (`plans`).

    The same slots; the rule state (`LAZY`) read or written through properties
    that first end the plan (``plan_mode.end`` sets those slots and makes the
    frame a `Frame` again). A replaying frame made by `planned` also leaves the
    slots of `UNTIL_TOUCHED` unset until something touches them: its empty
    containers, and the given tree's index (``plan_mode.index``).
    Every other attribute is the plain slot.
    """

    __slots__ = ()

    def close(self) -> None:
        """Ends the run; a replay's frame that nothing else touched, for less.

        Such a frame (`planned`, its plan not ended, no slot of `UNTIL_TOUCHED`
        made) holds values in only the slots dropped here; the others are unset.
        """
        plan = self.plan_mode
        if plan is None or plan.touched:
            Frame.close(self)
            return
        self.alive = False
        self.plan_mode = None
        self.rng = None
        self.rngs = None

    def settle(self) -> None:
        """Sets every slot left unset but the rule state: it becomes a `Frame`."""
        for name in UNTIL_TOUCHED:
            getattr(self, name)


def _new_dict(frame: Frame) -> dict:
    return {}


def _new_list(frame: Frame) -> list:
    return []


def _index(frame: Frame) -> Any:
    return frame.plan_mode.index()


#: The slots a replaying frame (`planned`) sets only when touched, each with
#: what makes its value: empty containers, and the given tree flattened.
UNTIL_TOUCHED = {
    "axes_of": _new_dict,
    "rng_counts": _new_dict,
    "templates": _new_dict,
    "created": _new_dict,
    "assigned": _new_dict,
    "read_log": _new_list,
    "path_of_array": _new_dict,
    "regularizers": _new_list,
    "given_tree": _index,
}

_NO_COLLECTIONS: frozenset[str] = frozenset()


def planned(scope: Any, trace: Any, rngs: Any, get_variable: Any, plan: Any) -> Any:
    """The frame of an eager `js.apply` that replays ``plan`` from its start.

    What `Frame` sets for `js.apply` without ``mutable`` or ``rules``, less the
    rule state (`LAZY`) and the slots of `UNTIL_TOUCHED` (a replayed read takes
    its array from the given tree itself, not from its index).
    """
    frame = _new_object(PlannedFrame)
    frame.plan_mode = plan
    frame.is_run = True
    frame.initializing = False
    frame.mutable = _NO_COLLECTIONS
    frame.trace_state = trace
    frame.get_variable = get_variable
    frame.rules = None
    frame.scope = scope
    frame.name_scope = ""
    frame.alive = True
    frame.rng = None
    frame.rngs = rngs
    frame.given_by_id = None
    frame.lift = None
    return frame


_new_object = object.__new__


def _lazy(name: str) -> property:
    slot = Frame.__dict__[name]

    def get(frame: Frame) -> Any:
        if frame.plan_mode is not None:  # None once the run is closed
            frame.plan_mode.end(frame)
        return slot.__get__(frame)

    def set_(frame: Frame, value: Any) -> None:
        if frame.plan_mode is not None:
            frame.plan_mode.end(frame)
        slot.__set__(frame, value)

    return property(get, set_, doc=f"Frame.{name}, ending the plan first.")


def _until_touched(name: str, make: Callable[[Frame], Any]) -> property:
    slot = Frame.__dict__[name]

    def get(frame: Frame) -> Any:
        try:
            return slot.__get__(frame)
        except AttributeError:  # unset in a frame made by `planned`
            value = make(frame)
            slot.__set__(frame, value)
            if frame.plan_mode is not None:  # so its close drops the value
                frame.plan_mode.touched = True
            return value

    return property(get, slot.__set__, doc=f"Frame.{name}, set when first touched.")


for _name in LAZY:
    setattr(PlannedFrame, _name, _lazy(_name))
for _name, _make in UNTIL_TOUCHED.items():
    setattr(PlannedFrame, _name, _until_touched(_name, _make))


class _Entered:
    """The context manager of `Frame.entered`."""

    __slots__ = ("_frame", "_on_exit", "_token")

    def __init__(self, frame: Frame, on_exit: Callable[[], None] | None):
        self._frame = frame
        self._on_exit = on_exit

    def __enter__(self) -> Frame:
        self._token = _FRAME.set(self._frame)
        return self._frame

    def __exit__(self, *exc_info: Any) -> None:
        _FRAME.reset(self._token)
        if self._on_exit is not None:
            self._on_exit()


_MSG_NOT_IN_RUN = (
    "{what} was called outside a run. Call it inside a function run by "
    "js.init(fn, rng, ...) or js.apply(fn, variables, ...) (or "
    "js.transform(fn).init/.apply): variables only exist while a run is in "
    "progress."
)


def current_run(what: str) -> Frame:
    """Returns the frame of the run in progress, or raises `NotInRunError`."""
    frame = _FRAME.get()
    if frame is None or not frame.is_run:
        raise errors.NotInRunError(_MSG_NOT_IN_RUN.format(what=what))
    return frame
