"""Apply plans: an eager `js.apply` that replays an earlier apply's rule outcomes.

Un-jitted, `js.apply` runs TF1's rules (name scopes, open counts, the path
rules, the records) between eager ops, where they cost several times what they
cost alone. Yet with the same function, the same arguments to each scope and
read, in the same order, they give the same outcomes every call: the rule state
of a run is a function of its events.

So the first eager apply of a function *records* its events: entering a
`variable_scope` by name, leaving it, and reading a variable on
`get_variable`'s hot path, each with its arguments and outcome (the new scope's
fields and name scope; the path, the collection, whether an earlier read of the
run is returned). Later applies of the same function *replay*: each event
compares its arguments with the plan's next one and takes the recorded
outcome; a read still takes the array from the given tree and checks its shape
and dtype. The rule state itself is not kept while replaying.

The rule state (`context.LAZY`) lives in slots of the frame that stay unset
while a plan is recorded or replayed: the frame is a `context.PlannedFrame`,
whose properties for those slots end the plan. So any code that touches the
state (`js.assign`, a name scope, a lifted transform, a template, a query)
ends it: the state is built by running the events so far through the ordinary
code (`_Replay.end`), and the run goes on as usual. So does the first event that
differs from the plan, or that the plan does not cover (a scope entered by
object or with defaults, a read with a regularizer, axes, TF1 keyword
arguments, another dtype or inside another JAX trace, a value that is not a
float32 array of the shape asked). A recording ends the same way: its events
run on a *shadow* frame holding the state, so that anything outside the events
that touches it is seen, and the plan stops there.

The replay of a matching event is inline in `scope.variable_scope` and
`variables.get_variable` (a call per event costs what the replay saves); the
recorder's and replayer's methods take everything else.

Setters of a `VariableScope` and `VariableScope.get_variable` end a plan first
(`context.end_plan`): they change what later events see without an argument
saying so.

Plans are kept per function code (while it lives; other callables: per
object), for eager applies only: under ``jax.jit`` each trace is new and would
never match. A function whose
plan was dropped `STRIKES` times is not planned again.

Imports: `context`, `jax_compat`, `scope`, `tree`, `values`, `variables`.
"""

from __future__ import annotations

import weakref
from typing import Any

from jscope._src import context, tree
from jscope._src.context import LAZY, Frame, PlannedFrame
from jscope._src.jax_compat import EVAL_TRACE, TRACE_REF
from jscope._src.scope import VariableScope, variable_scope
from jscope._src.values import F32
from jscope._src.variables import JNP_F32, get_variable, read_at_apply, shared_read

ENTER = context.PLAN_ENTER
READ = context.PLAN_READ
EXIT = context.PLAN_EXIT
END = context.PLAN_END
#: The event a recorder offers the inline replay: of no kind, so it never matches.
_IDLE = (None,)

#: After this many dropped plans a function is not planned again.
STRIKES = 3

#: id(fn) -> [weakref to fn, plan or None, strikes, dicts]: the plan, a list of
#: events linked in order (`_linked`); dicts, ``(parent, key, keys)`` of each
#: dict a read of the plan walks through, parents first, checked once per
#: apply (`_nodes`).
_PLANS: dict[int, list[Any]] = {}


def replaying(fn: Any, variables: Any, rngs: Any) -> Any:
    """The frame of an eager `js.apply` of ``fn`` that replays its plan, or None.

    For `js.apply` without ``mutable`` or ``rules``: None also where ``fn`` has
    no plan, the apply is not eager, or the tree is not one the plan can read
    as it is (`_fits`); `begin` then decides on the frame `Frame` makes.
    """
    owner = getattr(fn, "__code__", fn)
    entry = _PLANS.get(id(owner))
    if entry is None or entry[1] is None or entry[0]() is not owner:
        return None
    trace = TRACE_REF.value
    if type(trace) is not EVAL_TRACE:
        return None
    nodes = _fits(entry, variables)
    if nodes is None:
        return None
    replay = _Replay(entry, nodes)
    return context.planned(_new_root(), trace, rngs, get_variable, replay)


def _new_root() -> VariableScope:
    """A new root scope, as ``VariableScope(False, "")`` makes it, for less."""
    root = _new_object(VariableScope)
    (
        root._reuse,
        root._name,
        root._initializer,
        root._regularizer,
        root._dtype,
        root._custom_getter,
        root._original_name_scope,
        root._plain,
    ) = _ROOT
    return root


_new_object = object.__new__
# A root scope's fields, in `VariableScope.__slots__` order (`_new_root`).
_ROOT = tuple(getattr(VariableScope(False, ""), s) for s in VariableScope.__slots__)


def begin(frame: Frame, fn: Any, variables: Any) -> Any:
    """Starts recording or replaying a plan for an eager apply of ``fn``.

    Returns:
      The recorder or replayer (`finish` it after ``fn`` returns), or None
      when ``fn`` is not planned.
    """
    # A function's code (a bound method's too): a lambda written inline or a
    # method is a new object every call. Every event is compared with the plan
    # anyway, so the key only decides which plan is tried.
    owner = getattr(fn, "__code__", fn)
    key = id(owner)
    entry = _PLANS.get(key)
    if entry is not None and entry[0]() is owner:
        if entry[1] is not None:
            nodes = _fits(entry, variables)
            if nodes is not None:
                return _Replay(entry, nodes).attach(frame)
        if entry[2] >= STRIKES:
            return None
    else:
        try:
            ref = weakref.ref(owner, _forget(key))
        except TypeError:  # not weakly referable: no plan
            return None
        entry = _PLANS[key] = [ref, None, 0, ()]
    return _Record(frame, entry, variables)


def _fits(entry: list[Any], variables: Any) -> list[dict] | None:
    """The dicts ``entry``'s plan reads through in ``variables``, or None.

    None where the plan cannot replay on ``variables`` (`_nodes`); the plan is
    then dropped: a tree of other keys is a drop, so that a function applied
    to trees of two shapes in turn is not recorded afresh every call.
    """
    nodes = _nodes(variables, entry[3])
    if nodes is None:
        _drop(entry)
    return nodes


def _nodes(variables: Any, dicts: tuple) -> list[dict] | None:
    """The dicts of ``variables`` a replay reads through, if it can read them.

    ``dicts`` holds ``(parent, key, keys)`` for each dict a plan's reads walk
    through, parents first: the dict is ``nodes[parent][key]``, where
    ``nodes[0]`` is ``variables`` and ``nodes[i]`` the dict of
    ``dicts[i - 1]``; it had the keys ``keys`` when recorded (all str, none
    with a ``/``). Where every collection is a `dict` and each of these dicts
    still has its keys, the one way to a path in the flattened tree is the walk
    the read recorded, and its leaf is there. Checked once per apply: a dict's
    keys are compared in C.
    """
    if type(variables) is not dict:
        return None
    for sub in variables.values():
        if type(sub) is not dict:
            return None
    nodes: list[dict] = [variables]  # so a collection's parent is 0
    append = nodes.append
    for parent, key, keys in dicts:
        node = nodes[parent].get(key)
        if type(node) is not dict or node.keys() != keys:
            return None
        append(node)
    return nodes


def _drop(entry: list[Any]) -> None:
    """Drops ``entry``'s plan: the next apply records again (none after `STRIKES`)."""
    entry[1] = None
    entry[2] += 1


def _forget(key: int) -> Any:
    def forget(ref: Any, plans: dict[int, list[Any]] = _PLANS) -> None:
        entry = plans.get(key)  # bound: module globals may be gone at exit
        if entry is not None and entry[0] is ref:
            del plans[key]

    return forget


def _shadow(frame: Frame, root: VariableScope, values: dict[str, Any]) -> Frame:
    """A frame for running events as the ordinary code does, beside ``frame``.

    It starts as a run does: at the root scope ``root``, no name scope, with
    ``values`` read so far.
    """
    shadow = Frame(
        is_run=True,
        scope=root,
        given_tree=frame.given_tree,
        mutable=frame.mutable,
        get_variable=frame.get_variable,
        rules=frame.rules,
    )
    shadow.trace_state = frame.trace_state
    shadow.values = values
    return shadow


class _Record:
    """Records the events of one apply; the state lives on a shadow frame."""

    __slots__ = (
        "entry", "shadow", "plan", "next", "tree", "ways", "dicts", "touched",
    )  # fmt: skip

    def __init__(self, frame: Frame, entry: list[Any], variables: Any):
        self.entry = entry
        self.touched = True  # an ordinary frame's slots are all set
        self.next = _IDLE  # nothing to replay: the inline checks fail
        self.plan: list[Any] = []
        self.tree = variables
        # Each dict a read walks through: its keys from the tree (``ways``: to
        # its number, 1 for the first in ``dicts``, 0 for the tree itself) and
        # ``(parent's number, key, its keys)`` (`_nodes`).
        self.ways: dict[tuple[str, ...], int] = {}
        self.dicts: list[tuple[int, str, frozenset[str]]] = []
        # At the run's start: the frame's root scope is the shadow's too.
        shadow = self.shadow = _shadow(frame, frame.scope, frame.values)
        for name in LAZY:
            setattr(shadow, name, getattr(frame, name))
            delattr(frame, name)
        frame.plan_mode = self
        frame.__class__ = PlannedFrame

    def end(self, frame: Frame) -> None:
        """Stops recording: the state goes back to ``frame``; the plan stops here."""
        frame.__class__ = Frame
        frame.plan_mode = None
        shadow = self.shadow
        for name in LAZY:
            setattr(frame, name, getattr(shadow, name))

    def finish(self) -> None:
        """After the run returned: keeps the plan, unless it has no event."""
        entry = self.entry
        if self.plan:
            entry[1] = _linked(self.plan)
            entry[3] = tuple(self.dicts)
        else:  # nothing to replay: the first event is one plans do not cover
            entry[2] = STRIKES

    def _on_shadow(self, frame: Frame, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call`` with the shadow current; if it raises, the recording ends."""
        token = context.make_current(self.shadow)
        try:
            result = call(*args, **kwargs)
        except BaseException:
            context.restore_current(token)
            self.end(frame)
            raise
        context.restore_current(token)
        return result

    def _walk(self, coll: str, full: str, value: Any) -> tuple[int, str] | None:
        """How a replay finds ``value``, read at ``full``, in the given tree.

        ``(number, leaf)``: the number in ``ways`` of the dict holding the leaf
        (its index in `_nodes`'s list), and the leaf's key. Each dict on the
        way from the tree goes into ``dicts`` with its keys. None where the
        tree is not plain there (a dict that is not a `dict`, a key that is not
        a str or holds a ``/``): the flattened tree might not give what the
        walk finds.
        """
        node = self.tree.get(coll)
        way: tuple[str, ...] = (coll,)
        found: list[tuple[tuple[str, ...], Any]] = [(way, node)]
        *parents, leaf = full.split("/")
        for key in parents:
            node = node.get(key) if type(node) is dict else None
            way += (key,)
            found.append((way, node))
        ways = self.ways
        for way, node in found:  # a dict already taken: its keys are known
            if type(node) is not dict or (way not in ways and not _plain_dict(node)):
                return None
        if node.get(leaf) is not value:  # pyright: ignore[reportOptionalMemberAccess]
            return None
        dicts = self.dicts
        parent = 0  # the tree (`_nodes` puts it first)
        for way, node in found:
            index = ways.get(way)
            if index is None:
                index = ways[way] = len(dicts) + 1
                dicts.append((parent, way[-1], frozenset(node)))  # pyright: ignore[reportArgumentType]
            parent = index
        return parent, leaf

    def _in_step(self, frame: Frame) -> bool:
        shadow = self.shadow
        return frame.scope is shadow.scope and frame.name_scope == shadow.name_scope

    def enter(self, cm: variable_scope, frame: Frame) -> VariableScope:
        args = cm._args
        if not (_plain_entry(args) and self._in_step(frame)):
            self.end(frame)
            return cm.__enter__()
        shadow = self.shadow
        new = self._on_shadow(frame, cm.__enter__)
        cm._frame = frame
        frame.scope = new
        frame.name_scope = shadow.name_scope
        fields = tuple(getattr(new, slot) for slot in VariableScope.__slots__)
        self.plan.append((ENTER, args[0], args[5], fields, shadow.name_scope))
        return new

    def exit(self, cm: variable_scope, frame: Frame, exc_info: Any) -> None:
        shadow = self.shadow
        if not (cm._new is shadow.scope and self._in_step(frame)):
            self.end(frame)
            return cm.__exit__(*exc_info)
        cm._frame = shadow
        cm.__exit__(*exc_info)
        frame.scope = shadow.scope
        frame.name_scope = shadow.name_scope
        self.plan.append((EXIT,))
        return None

    def read(
        self, frame, name, shape, dtype, initializer, regularizer, trainable,
        collection, axes, tf1_kwargs,
    ):  # fmt: skip
        shadow = self.shadow
        scope = shadow.scope
        if (
            _plain_read(name, shape, dtype, initializer, regularizer, axes, tf1_kwargs)
            and scope._plain is True
            and TRACE_REF.value is frame.trace_state
            and self._in_step(frame)
        ):
            prefix = scope._name
            full = f"{prefix}/{name}" if prefix else name
            seen = full in shadow.kind_of
            if not seen or shared_read(shadow, scope, full, shape, dtype, None):
                value = self._on_shadow(
                    frame, get_variable, name, shape, dtype, initializer,
                    trainable=trainable, collection=collection,
                )  # fmt: skip
                coll = shadow.collection_of[full]
                walk = self._walk(coll, full, value)
                if walk is not None:
                    # The shape is not kept: a replay compares the one it is
                    # given with the array's, as an ordinary read does.
                    self.plan.append((
                        READ, name, dtype, trainable, collection, full, coll,
                        seen, *walk,
                    ))  # fmt: skip
                    return value
                self.end(frame)  # a tree a replay cannot read as it is
                return value
        self.end(frame)
        return get_variable(
            name, shape, dtype, initializer, regularizer, trainable=trainable,
            collection=collection, axes=axes, **tf1_kwargs,
        )  # fmt: skip


class _Replay:
    """Replays a plan: each event takes its recorded outcome while it matches."""

    __slots__ = ("entry", "plan", "next", "nodes", "touched")

    def __init__(self, entry: list[Any], nodes: list[dict]):
        self.entry = entry
        self.plan = entry[1]
        # The event to replay next: each names the one after it (`_linked`).
        self.next = self.plan[0]
        # The given tree, then the dicts the plan's reads walk through (`_nodes`).
        self.nodes = nodes
        # Whether a slot of `context.UNTIL_TOUCHED` is set (`PlannedFrame.close`).
        self.touched = False

    def attach(self, frame: Frame) -> _Replay:
        """Makes the ordinary ``frame`` of an apply replay this plan."""
        for name in LAZY:
            delattr(frame, name)
        frame.plan_mode = self
        frame.__class__ = PlannedFrame
        self.touched = True  # an ordinary frame's slots are all set
        return self

    def index(self) -> Any:
        """The given tree flattened, for a frame made without it."""
        return tree.index(self.nodes[0])

    def finish(self) -> None:
        pass

    def end(self, frame: Frame) -> None:
        """Builds the rule state of the events so far; the run goes on as usual."""
        frame.settle()  # pyright: ignore[reportAttributeAccessIssue] (PlannedFrame)
        frame.__class__ = Frame
        frame.plan_mode = None
        pos = self.next[-2]  # the index of the event not replayed
        if self.next[0] is not END and self.entry[1] is self.plan:  # a difference
            _drop(self.entry)
        shadow = _shadow(frame, VariableScope(False, ""), {})
        opened = []
        token = context.make_current(shadow)
        try:
            for event in self.plan[:pos]:
                kind = event[0]
                if kind is ENTER:
                    cm = variable_scope(event[1], reuse=event[2])
                    cm.__enter__()
                    opened.append(cm)
                elif kind is EXIT:
                    opened.pop().__exit__(None, None, None)
                elif not event[7]:  # a read new in the run (shared: no change)
                    _, _, dtype, trainable, _, full, coll, _, number, leaf = event[:10]
                    # The shape the read was given: its array's (checked).
                    shape = self.nodes[number][leaf].shape
                    read_at_apply(
                        shadow, full, shape, dtype, None, trainable, coll, None
                    )
        finally:
            context.restore_current(token)
            for name in LAZY:
                setattr(frame, name, getattr(shadow, name))

    # `variable_scope.__enter__`/`__exit__` and `get_variable` replay a matching
    # event inline; these take the rest: the plan ends, the event runs as usual.

    def enter(self, cm: variable_scope, frame: Frame) -> VariableScope:
        self.end(frame)
        return cm.__enter__()

    def exit(self, cm: variable_scope, frame: Frame, exc_info: Any) -> None:
        self.end(frame)
        return cm.__exit__(*exc_info)

    def read(
        self, frame, name, shape, dtype, initializer, regularizer, trainable,
        collection, axes, tf1_kwargs,
    ):  # fmt: skip
        self.end(frame)
        return get_variable(
            name, shape, dtype, initializer, regularizer, trainable=trainable,
            collection=collection, axes=axes, **tf1_kwargs,
        )  # fmt: skip


def _linked(events: list[tuple]) -> list[tuple]:
    """A recording's ``events`` as a replay takes them, in a list of the same order.

    Each event gains two items: its index, and the next event (the last one's,
    the plan's end: ``(END, len(events), None)``). A replayed event then finds
    its successor in itself (``plan.next = event[i]``), not by a position kept
    and checked against the plan's length, and a replay that ends knows how
    far it came from the event it stopped at (``next[-2]``).
    """
    following: tuple = (END, len(events), None)
    linked = []
    for index in range(len(events) - 1, -1, -1):
        following = (*events[index], index, following)
        linked.append(following)
    linked.reverse()
    return linked


def _plain_dict(node: Any) -> bool:
    return type(node) is dict and all(type(k) is str and "/" not in k for k in node)


def _plain_entry(args: tuple) -> bool:
    """Whether `variable_scope` arguments are a plan's: a str name, ``reuse`` only."""
    return (
        type(args[0]) is str
        and args[1] is None
        and args[2] is None
        and args[3] is None
        and args[4] is None
        and args[6] is None
        and args[7] is True
    )


def _plain_read(name, shape, dtype, initializer, regularizer, axes, tf1_kwargs):
    """Whether `get_variable` arguments are a plan's.

    A str name, a shape as a tuple or list, float32, no regularizer, axes or TF1
    keyword arguments, and a function initializer or none. Checked before the
    arguments are compared with a plan's, so that comparison is of plain values.
    """
    return (
        type(name) is str
        and (type(shape) is tuple or type(shape) is list)
        and regularizer is None
        and axes is None
        and not tf1_kwargs
        and (dtype is None or dtype is F32 or dtype is JNP_F32)
        and (initializer is None or callable(initializer))
    )
