"""Random scope programs played against a small model of the scope and reuse rules.

A *program* is a tree of operations -- open a variable scope by name, by
default name or by re-entering a captured `VariableScope`; `get_variable`;
`js.Variable`; `reuse_variables()` -- drawn from tiny alphabets so that names
collide, scopes are reopened and reuse flags clash all the time. The model
below re-implements the rules of DESIGN.md §3-§4 in plain Python, without
jscope, and predicts for a whole program either the variables it leaves behind
(path, shape and collection, in tree order) or the first error and its class.
It doubles as a compact statement of those rules.

Properties:

1. `js.init` of a program gives exactly the model's variables, or raises exactly
   the model's error class with the offending path in the message.
2. `js.apply` on init's tree sees the same values, and a program that fails at
   init fails at apply, with the same class, on the tree of the part of the
   program that ran without error.
3. Initial values do not depend on call order: swapping two sibling operations
   leaves the value at every path they share unchanged, and adding an unrelated
   variable leaves the other variables exactly as they were.
4. `js.flatten` / `js.unflatten` round-trip init's trees, and `js.unflatten`
   refuses a variable `k` next to a variable `k/x`.
5. In larger programs of scope entries alone, every entry has the model's name:
   default names follow TF1's counts.

Example counts are multiples of the hypothesis profile's base (`helpers.examples`;
``HYPOTHESIS_PROFILE``, see ``conftest.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import numpy as np
import pytest
from helpers import examples
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

import jscope as js

# ----------------------------------------------------------------------- programs

# The model's own spelling of `js.AUTO_REUSE`; a reuse argument is one of
# None, False, True or AUTO.
AUTO = "AUTO_REUSE"


@dataclasses.dataclass(frozen=True)
class Scope:
    """``with js.variable_scope(name, reuse=reuse) as s: body``."""

    name: str
    reuse: object
    body: tuple


@dataclasses.dataclass(frozen=True)
class DefaultScope:
    """``with js.variable_scope(None, default_name=..., reuse=reuse) as s: body``."""

    default_name: str
    reuse: object
    body: tuple


@dataclasses.dataclass(frozen=True)
class Reenter:
    """``with js.variable_scope(captured, reuse=reuse) as s: body``.

    ``captured`` is the scope object yielded by an earlier scope entry of the same
    program: entry number ``index % n`` of the ``n`` entries made so far. With no
    entry made yet, the body runs where it stands.
    """

    index: int
    reuse: object
    body: tuple


@dataclasses.dataclass(frozen=True)
class GetVar:
    """``js.get_variable(name, shape, trainable=trainable)``."""

    name: str
    shape: tuple
    trainable: bool = True


@dataclasses.dataclass(frozen=True)
class NewVar:
    """``js.Variable(lambda key: normal(key, shape), name=name, trainable=...)``."""

    name: str | None
    shape: tuple
    trainable: bool = True


@dataclasses.dataclass(frozen=True)
class ReuseVariables:
    """``js.get_variable_scope().reuse_variables()``."""


@dataclasses.dataclass(frozen=True)
class Unrelated:
    """A variable no other operation can touch, and nothing else.

    ``with js.variable_scope("unrelated", reuse=js.AUTO_REUSE):
    js.get_variable("w", (2,))``, without capturing the scope or taking an
    operation number. Only `Runner` knows it (it is not part of the model).
    """


SCOPES = (Scope, DefaultScope, Reenter)


def to_source(program: tuple) -> str:
    """Renders a program as the jscope code it stands for (for failure reports)."""
    lines: list[str] = []
    entries = [0]

    def reuse_arg(reuse):
        return {None: "", False: ", reuse=False", True: ", reuse=True"}.get(
            reuse, ", reuse=js.AUTO_REUSE"
        )

    def emit(ops, indent):
        pad = "    " * indent
        if not ops:
            lines.append(pad + "pass")
        for op in ops:
            if isinstance(op, SCOPES):
                if isinstance(op, Scope):
                    arg = repr(op.name)
                elif isinstance(op, DefaultScope):
                    arg = f"None, default_name={op.default_name!r}"
                elif entries[0]:
                    arg = f"s{op.index % entries[0]}"
                else:
                    lines.append(pad + "if True:  # nothing captured yet")
                    emit(op.body, indent + 1)
                    continue
                n = entries[0]
                entries[0] += 1
                lines.append(
                    f"{pad}with js.variable_scope({arg}{reuse_arg(op.reuse)}) as s{n}:"
                )
                emit(op.body, indent + 1)
            elif isinstance(op, GetVar):
                extra = "" if op.trainable else ", trainable=False"
                lines.append(f"{pad}js.get_variable({op.name!r}, {op.shape}{extra})")
            elif isinstance(op, NewVar):
                extra = "" if op.trainable else ", trainable=False"
                lines.append(
                    f"{pad}js.Variable(normal({op.shape}), name={op.name!r}{extra})"
                )
            else:
                lines.append(pad + "js.get_variable_scope().reuse_variables()")

    emit(program, 0)
    return "\n".join(lines)


# -------------------------------------------------------------------------- model


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _below(path: str, prefix: str) -> bool:
    return path.startswith(prefix + "/")


@dataclasses.dataclass
class _ScopeObject:
    """What a `VariableScope` carries for these rules: its path and reuse flag.

    The flag is mutable: ``reuse_variables()`` sets it on the open scope's object,
    and re-entering that object later (by object) starts from it.
    """

    name: str
    reuse: object  # False, True or AUTO; never None


@dataclasses.dataclass
class ModelError(Exception):
    """The first error a program raises, as the model predicts it.

    Attributes:
      kind: One of ``exists``, ``not_found``, ``shape``, ``conflict``,
        ``default_reuse``.
      step: The number of the operation raising it (operations are numbered in
        the order they run, from 0).
      path: The full path concerned (the default name for ``default_reuse``).
      detail: ``exists``: whether a `js.Variable` holds the path; ``shape``:
        (requested, found); ``conflict``: the existing paths it collides with.
    """

    kind: str
    step: int
    path: str
    detail: object = None


@dataclasses.dataclass(frozen=True)
class Var:
    """A variable the model knows about."""

    kind: str  # "get_variable" or "Variable"
    shape: tuple
    collection: str


class Model:
    """TF1's variable-scope rules (DESIGN.md §3-§4), in plain Python.

    State, as in TF1's graph and variable store:

    - ``scope``: the open variable scope object (path and reuse flag);
      ``name_scope``: the open name scope (``""`` at the root).
    - ``used``: ``Graph.unique_name``'s table of names in use -> count. Name scopes
      and `Variable` names are handed out from it; a `get_variable` path marks
      itself in it, so ``Variable(name="x")`` after ``get_variable("x")`` is
      ``x_1``.
    - ``counts``: ``_VariableScopeStore.variable_scopes_count``, scope path ->
      times opened, which picks default names.
    - ``vars``: every variable, path -> `Var`, in creation order.
    - ``captured``: every scope object yielded so far, in entry order.

    Rules:

    - Entering a scope *by name* (or default name) opens ``parent/name``; its
      reuse flag is the argument if True or AUTO, else the parent's (None and
      False inherit, so a sub-scope cannot turn reuse off). It opens the name
      scope ``unique_name(<name scope>/<name>)`` (for a default name:
      ``<name scope>/<default_name>``, as TF1's ``ops.name_scope(default_name)``)
      and counts one opening of its path. Leaving it forgets the counts of every
      path below it (``close_variable_subscopes``).
    - A default name is the first of ``d``, ``d_1``, ``d_2``, ... whose path
      under the parent has a zero count. ``reuse=True`` or AUTO with a default
      name is an error.
    - Entering a scope *by object* reopens its path, wherever we are; its flag is
      the argument if True or AUTO, else the object's. Like every entry it opens a
      new name scope, ``unique_name(<name scope>/<last path component>)`` (TF1),
      and counts one opening of its path; leaving it restores the whole count
      store -- every path's count, not only those below its own -- to what it
      was just after it was entered (DESIGN §3; TF1's
      ``_pure_variable_scope.__exit__``).
    - ``reuse_variables()`` sets the open scope object's flag to True.
    - ``get_variable(name)`` at ``scope/name``: a path held by a `Variable` is
      invisible to it (with the flag True it "does not exist") and cannot be
      created again ("already exists"); an existing path is an error when the
      flag is False, else it is returned if the shapes agree (else a shape
      error); a missing path is an error when the flag is True, else it is
      created.
    - ``Variable(name)`` is always created, at ``unique_name(<name scope>/<name>)``
      (``Variable`` when unnamed).
    - Creating a path ``k`` while a path ``k/...`` exists, or ``k/x`` while ``k``
      exists, is a path conflict.
    """

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.step = 0
        self.scope = _ScopeObject("", False)
        self.name_scope = ""
        self.used: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.vars: dict[str, Var] = {}
        self.captured: list[_ScopeObject] = []
        self.events: list[tuple[int, str, str]] = []  # (step, op kind, path)

    # -- names

    def unique_name(self, name: str) -> str:
        """TF1's ``Graph.unique_name`` (without its case folding, DESIGN §10)."""
        i = self.used.get(name, 0)
        self.used[name] = i + 1
        if i == 0:
            return name
        candidate = name
        while candidate in self.used:
            candidate = f"{name}_{i}"
            i += 1
        self.used[candidate] = 1
        return candidate

    def default_name(self, base: str) -> str:
        """TF1's ``_get_unique_variable_scope``."""
        prefix = _join(self.scope.name, base)
        if not self.counts.get(prefix, 0):
            return base
        i = 1
        while self.counts.get(f"{prefix}_{i}", 0):
            i += 1
        return f"{base}_{i}"

    # -- running a program

    def run(self, ops: tuple) -> None:
        for op in ops:
            if self.limit is not None and self.step >= self.limit:
                return
            step = self.step
            self.step += 1
            if isinstance(op, Scope):
                self.enter_by_name(op.name, op.name, op.reuse, op.body)
            elif isinstance(op, DefaultScope):
                if op.reuse is True or op.reuse == AUTO:
                    raise ModelError("default_reuse", step, op.default_name)
                name = self.default_name(op.default_name)
                self.enter_by_name(name, op.default_name, op.reuse, op.body)
            elif isinstance(op, Reenter):
                if self.captured:
                    obj = self.captured[op.index % len(self.captured)]
                    self.enter_by_object(obj, op.reuse, op.body)
                else:
                    self.run(op.body)
            elif isinstance(op, GetVar):
                self.get_variable(step, op)
            elif isinstance(op, NewVar):
                self.variable(step, op)
            else:
                self.scope.reuse = True

    def _open(self, obj: _ScopeObject, name_scope: str, body: tuple) -> None:
        saved = self.scope, self.name_scope
        self.captured.append(obj)
        self.scope, self.name_scope = obj, name_scope
        self.run(body)
        self.scope, self.name_scope = saved

    def enter_by_name(self, name, name_scope_base, reuse, body) -> None:
        path = _join(self.scope.name, name)
        flag = reuse if reuse else self.scope.reuse
        name_scope = self.unique_name(_join(self.name_scope, name_scope_base))
        self.counts[path] = self.counts.get(path, 0) + 1
        self._open(_ScopeObject(path, flag), name_scope, body)
        for key in self.counts:
            if _below(key, path):
                self.counts[key] = 0

    def enter_by_object(self, obj, reuse, body) -> None:
        path = obj.name
        flag = reuse if reuse else obj.reuse
        last = path.rsplit("/", 1)[-1]
        name_scope = self.unique_name(_join(self.name_scope, last))
        self.counts[path] = self.counts.get(path, 0) + 1
        saved = dict(self.counts)  # TF1: copy.copy(variable_scopes_count)
        self._open(_ScopeObject(path, flag), name_scope, body)
        self.counts = saved

    # -- variables

    def _create(self, step, path, kind, shape, trainable) -> None:
        partners = [p for p in self.vars if _below(p, path) or _below(path, p)]
        if partners:
            raise ModelError("conflict", step, path, tuple(partners))
        collection = "params" if trainable else "state"
        self.vars[path] = Var(kind, shape, collection)

    def get_variable(self, step: int, op: GetVar) -> None:
        path = _join(self.scope.name, op.name)
        flag = self.scope.reuse
        found = self.vars.get(path)
        if found is not None and found.kind == "Variable":
            # Invisible to get_variable: reuse=True does not find it, and
            # creating it would make a second variable at its path.
            kind = "not_found" if flag is True else "exists"
            raise ModelError(kind, step, path, True)
        if found is not None:
            if flag is False:
                raise ModelError("exists", step, path, False)
            if found.shape != op.shape:
                raise ModelError("shape", step, path, (op.shape, found.shape))
        elif flag is True:
            raise ModelError("not_found", step, path)
        else:
            self._create(step, path, "get_variable", op.shape, op.trainable)
            self.used[path] = self.used.get(path, 0) + 1
        self.events.append((step, "get_variable", path))

    def variable(self, step: int, op: NewVar) -> None:
        base = "Variable" if op.name is None else op.name
        path = self.unique_name(_join(self.name_scope, base))
        self._create(step, path, "Variable", op.shape, op.trainable)
        self.events.append((step, "Variable", path))

    # -- the result

    def tree_paths(self) -> dict[str, list[tuple[str, tuple]]]:
        """``{collection: [(path, shape), ...]}`` in the order a nested dict keeps.

        Collections come in the order of their first variable; within one, a
        nested dict keeps each key where it was first inserted, so a path comes
        right after its siblings created earlier.
        """
        nested: dict[str, dict] = {}
        for path, var in self.vars.items():
            node = nested.setdefault(var.collection, {})
            *parents, leaf = path.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = var.shape

        def walk(node, prefix):
            for key, value in node.items():
                path = _join(prefix, key)
                if isinstance(value, dict):
                    yield from walk(value, path)
                else:
                    yield path, value

        return {coll: list(walk(node, "")) for coll, node in nested.items()}


@dataclasses.dataclass
class Prediction:
    error: ModelError | None
    model: Model


def predict(program: tuple, limit: int | None = None) -> Prediction:
    """Runs ``program`` on the model (the first ``limit`` operations, if given)."""
    model = Model(limit)
    try:
        model.run(program)
    except ModelError as e:
        return Prediction(e, model)
    return Prediction(None, model)


# --------------------------------------------------- running a program on jscope

_ERROR_CLASSES = {
    "exists": js.errors.VariableExistsError,
    "not_found": js.errors.VariableNotFoundError,
    "shape": js.errors.ShapeMismatchError,
    "conflict": js.errors.PathConflictError,
    "default_reuse": js.errors.ScopeArgumentError,
}
_JS_REUSE = {None: None, False: False, True: True, AUTO: js.AUTO_REUSE}


def _normal(shape, key):
    return jax.random.normal(key, shape)


class Runner:
    """Plays a program with jscope inside a run, recording what it sees.

    ``seen`` lists ``(step, Variable name or None, value)`` for every
    `get_variable` and `Variable`, numbered as the model numbers operations.
    With ``limit``, only the first ``limit`` operations run.
    """

    def __init__(self, program: tuple, limit: int | None = None):
        self.program = program
        self.limit = limit

    def __call__(self):
        self.step = 0
        self.captured = []
        self.seen = []
        self.run(self.program)

    def run(self, ops: tuple) -> None:
        for op in ops:
            if self.limit is not None and self.step >= self.limit:
                return
            if isinstance(op, Unrelated):
                with js.variable_scope("unrelated", reuse=js.AUTO_REUSE):
                    js.get_variable("w", (2,))
                continue
            step = self.step
            self.step += 1
            if isinstance(op, Scope):
                self.enter(op.name, {}, op.reuse, op.body)
            elif isinstance(op, DefaultScope):
                self.enter(None, {"default_name": op.default_name}, op.reuse, op.body)
            elif isinstance(op, Reenter):
                if self.captured:
                    obj = self.captured[op.index % len(self.captured)]
                    self.enter(obj, {}, op.reuse, op.body)
                else:
                    self.run(op.body)
            elif isinstance(op, GetVar):
                value = js.get_variable(op.name, op.shape, trainable=op.trainable)
                self.seen.append((step, None, value))
            elif isinstance(op, NewVar):
                init = functools.partial(_normal, op.shape)
                v = js.Variable(init, name=op.name, trainable=op.trainable)
                self.seen.append((step, v.name, v.value))
            else:
                js.get_variable_scope().reuse_variables()

    def enter(self, name_or_scope, kwargs, reuse, body) -> None:
        with js.variable_scope(name_or_scope, reuse=_JS_REUSE[reuse], **kwargs) as s:
            self.captured.append(s)
            self.run(body)


KEY = jax.random.key(0)


def _shapes(tree: dict) -> dict[str, list[tuple[str, tuple]]]:
    return {
        coll: [(path, tuple(v.shape)) for path, v in js.flatten(sub).items()]
        for coll, sub in tree.items()
    }


def _skeleton(node):
    """Keys in order, down to the leaves' identities."""
    if isinstance(node, dict):
        return [(key, _skeleton(value)) for key, value in node.items()]
    return id(node)


def _check_error(err: BaseException, expected: ModelError) -> None:
    """``err`` is the model's error class, and its message names the path."""
    cls = _ERROR_CLASSES[expected.kind]
    assert type(err) is cls, (type(err), cls, str(err))
    msg = str(err)
    path = re.escape(expected.path)
    if expected.kind == "exists":
        assert re.search(rf"Variable {path} already exists", msg), msg
        if expected.detail:
            assert "js.Variable" in msg, msg
    elif expected.kind == "not_found":
        assert re.search(rf"Variable {path} does not exist", msg), msg
    elif expected.kind == "shape":
        requested, found = expected.detail
        assert (
            f"Trying to share variable {expected.path}, but specified shape "
            f"{requested} and found shape {found}"
        ) in msg, msg
    elif expected.kind == "conflict":
        m = re.search(r"Variable (\S+) and variable (\S+) cannot both exist", msg)
        assert m, msg
        pair = set(m.groups())
        assert expected.path in pair, (msg, expected)
        (other,) = pair - {expected.path}
        assert other in expected.detail, (msg, expected)
    else:
        assert "cannot be used without a name_or_scope" in msg, msg
        assert repr(expected.path) in msg, msg
    if expected.kind in ("exists", "not_found", "shape"):
        assert err.path == expected.path, (err.path, expected)


# --------------------------------------------------------------------- strategies

SCOPE_NAMES = ("a", "b", "a/b")
DEFAULT_NAMES = ("a", "b")
GET_NAMES = ("w", "a", "b", "b/w")
VARIABLE_NAMES = ("x", "w", None, "a")
SHAPES = ((2,), (3,))
REUSE = (None, AUTO, True, False, AUTO, None)


def _leaf(get_names, variable_names, reuse_variables):
    get = st.builds(
        GetVar,
        st.sampled_from(get_names),
        st.sampled_from(SHAPES),
        st.booleans().map(lambda b: not b),
    )
    new = st.builds(
        NewVar,
        st.sampled_from(variable_names),
        st.sampled_from(SHAPES),
        st.booleans().map(lambda b: not b),
    )
    leaves = [get, new]
    if reuse_variables:
        leaves.append(st.just(ReuseVariables()))
    return st.one_of(*leaves)


def _scopes(children, scope_reuse, default_reuse, *, max_body=3, max_index=3):
    body = st.lists(children, max_size=max_body).map(tuple)
    return st.one_of(
        st.builds(Scope, st.sampled_from(SCOPE_NAMES), scope_reuse, body),
        st.builds(DefaultScope, st.sampled_from(DEFAULT_NAMES), default_reuse, body),
        st.builds(Reenter, st.integers(0, max_index), scope_reuse, body),
    )


def _programs(leaf, scope_reuse, default_reuse, *, sizes=(8, 5, 3, 3)):
    """Programs of up to ``max_ops`` trees of up to ``max_leaves`` leaves.

    ``sizes`` is ``(max_leaves, max_ops, max_body, max_index)``.
    """
    max_leaves, max_ops, max_body, max_index = sizes
    node = st.recursive(
        leaf,
        lambda kids: _scopes(
            kids, scope_reuse, default_reuse, max_body=max_body, max_index=max_index
        ),
        max_leaves=max_leaves,
    )
    return st.lists(node, min_size=1, max_size=max_ops).map(tuple)


# Every rule in play: reuse flags of all kinds, clashing shapes, names shared by
# get_variable, Variable and scopes; a good share of programs fail.
programs = _programs(
    _leaf(GET_NAMES, VARIABLE_NAMES, reuse_variables=True),
    scope_reuse=st.sampled_from(REUSE),
    # True or AUTO with a default name fails at once, so draw them rarely.
    default_reuse=st.sampled_from((None, False) * 8 + (True, AUTO)),
)

# Programs that never fail: everything runs under an AUTO_REUSE scope, each
# get_variable name has one shape, and no variable name is a scope name. They
# still reopen scopes, re-enter captured ones and draw default names.
_SAFE_SHAPES = {"w": (2,), "v": (3,)}
safe_programs = _programs(
    st.one_of(
        st.sampled_from(sorted(_SAFE_SHAPES)).map(lambda n: GetVar(n, _SAFE_SHAPES[n])),
        st.builds(NewVar, st.sampled_from(("x", None)), st.sampled_from(SHAPES)),
    ),
    scope_reuse=st.sampled_from((None, AUTO)),
    default_reuse=st.sampled_from((None, False)),
).map(lambda body: (Scope("top", AUTO, body),))


# Programs of scope entries only, larger and re-entering more: they never fail,
# and the name of every entry is compared, so they probe the default-name
# counts (DESIGN §3): a count that survives when TF1 forgets or restores it
# shows as a `_1` too many or too few.
scope_programs = _programs(
    _scopes(st.nothing(), st.just(None), st.just(None), max_body=0, max_index=15),
    scope_reuse=st.sampled_from((None, None, AUTO)),
    default_reuse=st.just(None),
    sizes=(20, 8, 4, 15),
)


def _init(program: tuple, limit: int | None = None):
    # js.init may run the program on tracers only (DESIGN §4.22), so the values
    # the program saw come from init_with_output, which runs it eagerly; the two
    # trees must agree bit for bit, in the same key order.
    runner = Runner(program, limit)
    _, tree = js.init_with_output(runner, KEY)
    fast = js.init(Runner(program, limit), KEY)
    assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(tree)
    assert list(js.flatten(fast)) == list(js.flatten(tree))
    for a, b in zip(
        jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(tree), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return tree, runner.seen


def _outcome(program: tuple) -> tuple[str, object]:
    try:
        return "ok", js.init(Runner(program), KEY)
    except js.errors.JscopeError as e:
        return type(e).__name__, None


# --------------------------------------------------------------------- properties


def _case(id_, expected, *program):
    return pytest.param(tuple(program), expected, id=id_)


_W = GetVar("w", (2,))

# Programs from DESIGN.md §3-§4 (and TF1, where DESIGN defers to it) with their
# outcome: the paths created, in order, or (error kind, path).
DOCUMENTED = [
    _case(
        "reopening-by-name-restarts-default-names",
        ("exists", "outer/dense/w"),
        Scope("outer", None, (DefaultScope("dense", None, (_W,)),)),
        Scope("outer", None, (DefaultScope("dense", None, (_W,)),)),
    ),
    _case(
        "explicit-openings-count-for-default-names",
        ["dense_1/w"],
        Scope("dense", None, ()),
        DefaultScope("dense", None, (_W,)),
    ),
    _case(
        "leaving-by-object-restores-counts-below",
        ["o/d_1/w", "o/d_1/v"],
        Scope(
            "o",
            None,
            (
                DefaultScope("d", None, ()),
                Reenter(0, None, (DefaultScope("d", None, (_W,)),)),
                DefaultScope("d", None, (GetVar("v", (2,)),)),
            ),
        ),
    ),
    _case(
        "leaving-by-object-restores-every-scopes-counts",
        ["p/t/w"],
        Scope("o", None, ()),
        Scope("p", None, (Scope("t", None, ()),)),
        Reenter(0, None, (Reenter(2, None, ()),)),
        Scope("p", None, (DefaultScope("t", None, (_W,)),)),
    ),
    _case(
        "variable-names-are-uniquified",
        ["w", "w_1", "w_2", "Variable"],
        _W,
        NewVar("w", (2,)),
        NewVar("w", (2,)),
        NewVar(None, (3,)),
    ),
    _case(
        "get-variable-at-a-variable-path",
        ("exists", "w"),
        NewVar("w", (2,)),
        _W,
    ),
    _case(
        "reopened-scope-opens-a-new-name-scope",
        ["a_1/x"],
        Scope("a", None, ()),
        Scope("a", None, (NewVar("x", (2,)),)),
    ),
    _case(
        "reentered-scope-opens-a-new-name-scope",
        ["a/w", "a_1/x"],
        Scope("a", None, ()),
        Reenter(0, None, (_W, NewVar("x", (2,)))),
    ),
    _case(
        "default-name-scope-is-uniquified-from-the-default-name",
        ["a_1/w", "a_2/x"],
        Scope("a", None, ()),
        Scope("a", None, ()),
        DefaultScope("a", None, (_W, NewVar("x", (2,)))),
    ),
    _case(
        "reuse-variables-for-the-rest-of-the-block",
        ["a/w"],
        Scope("a", None, (_W, ReuseVariables(), _W)),
    ),
    _case(
        "reentry-takes-the-objects-flag",
        ["a/w", "a/v"],
        Scope("a", None, (_W, ReuseVariables())),
        Reenter(0, None, (_W,)),
        Reenter(0, AUTO, (GetVar("v", (2,)),)),
    ),
    _case(
        "auto-reuse-gets-or-creates",
        ["a/w"],
        Scope("a", AUTO, (_W,)),
        Scope("a", AUTO, (_W,)),
    ),
    _case(
        "reuse-true-needs-the-variable",
        ("not_found", "a/w"),
        Scope("a", True, (_W,)),
    ),
    _case(
        "a-sub-scope-cannot-turn-reuse-off",
        ("not_found", "a/b/w"),
        _W,
        Scope("a", True, (Scope("b", False, (_W,)),)),
    ),
    _case(
        "shapes-must-agree-on-reuse",
        ("shape", "w"),
        _W,
        ReuseVariables(),
        GetVar("w", (3,)),
    ),
    _case(
        "k-and-k/x-cannot-both-exist",
        ("conflict", "a/w"),
        GetVar("a", (2,)),
        Scope("a", None, (_W,)),
    ),
    _case(
        "default-name-with-reuse-true",
        ("default_reuse", "a"),
        DefaultScope("a", True, ()),
    ),
]


@pytest.mark.parametrize(("program", "expected"), DOCUMENTED)
def test_documented_programs(program, expected):
    prediction = predict(program)
    if prediction.error is None:
        assert list(prediction.model.vars) == expected
    else:
        assert (prediction.error.kind, prediction.error.path) == expected
    _check_init(program)


@settings(max_examples=examples(12.5))
@given(programs)
def test_init_matches_model(program):
    note(to_source(program))
    event(_check_init(program))


@settings(max_examples=examples(2.5))
@given(scope_programs)
def test_scope_names_match_model(program):
    note(to_source(program))
    expected = predict(program)
    assert expected.error is None
    runner = Runner(program)
    js.init(runner, KEY)
    assert [s.name for s in runner.captured] == [
        obj.name for obj in expected.model.captured
    ]


def _check_init(program: tuple) -> str:
    """Checks `js.init` of ``program`` against the model; returns the outcome."""
    expected = predict(program)
    if expected.error is not None:
        with pytest.raises(js.errors.JscopeError) as info:
            js.init(Runner(program), KEY)
        _check_error(info.value, expected.error)
        return expected.error.kind
    tree, seen = _init(program)
    assert _shapes(tree) == expected.model.tree_paths()
    names = [(step, name) for step, name, _ in seen]
    assert names == [
        (step, path if kind == "Variable" else None)
        for step, kind, path in expected.model.events
    ]
    return "ok"


def _check_seen(seen, events, tree):
    flat = {
        path: value
        for coll in tree.values()
        for path, value in js.flatten(coll).items()
    }
    assert [step for step, _, _ in seen] == [step for step, _, _ in events]
    for (_, _, value), (_, _, path) in zip(seen, events, strict=True):
        np.testing.assert_array_equal(value, flat[path])


@settings(max_examples=examples(5))
@given(programs)
def test_apply_reproduces_init(program):
    note(to_source(program))
    expected = predict(program)
    if expected.error is None:
        tree, seen_at_init = _init(program)
        before = _skeleton(tree)
        runner = Runner(program)
        js.apply(runner, tree)
        events = expected.model.events
        _check_seen(seen_at_init, events, tree)
        _check_seen(runner.seen, events, tree)
        assert [name for _, name, _ in runner.seen] == [
            name for _, name, _ in seen_at_init
        ]
        assert _skeleton(tree) == before  # apply left its input alone
        return
    # The tree of the operations before the failing one; apply fails on the
    # same operation with the same class.
    limit = expected.error.step
    event(f"apply fails: {expected.error.kind}")
    assert predict(program, limit).error is None
    tree, _ = _init(program, limit)
    with pytest.raises(js.errors.JscopeError) as info:
        js.apply(Runner(program), tree)
    _check_error(info.value, expected.error)


def _swaps(draw_program):
    """A program and the same program with two sibling operations swapped."""

    @st.composite
    def strategy(draw):
        program = draw(draw_program)
        siblings = [program]

        def collect(ops):
            for op in ops:
                if isinstance(op, SCOPES):
                    if len(op.body) >= 2:
                        siblings.append(op.body)
                    collect(op.body)

        collect(program)
        siblings = [ops for ops in siblings if len(ops) >= 2]
        if not siblings:
            return program, program
        target = draw(st.sampled_from(range(len(siblings))))
        i = draw(st.integers(0, len(siblings[target]) - 2))
        chosen = siblings[target]

        def swap(ops):
            if ops is chosen:
                ops = list(ops)
                ops[i], ops[i + 1] = ops[i + 1], ops[i]
                return tuple(ops)
            return tuple(
                dataclasses.replace(op, body=swap(op.body))
                if isinstance(op, SCOPES)
                else op
                for op in ops
            )

        return program, swap(program)

    return strategy()


@settings(max_examples=examples(4))
@given(_swaps(safe_programs))
def test_values_do_not_depend_on_call_order(pair):
    program, swapped = pair
    note(to_source(program))
    note(to_source(swapped))
    first = js.flatten(js.init(Runner(program), KEY))
    second = js.flatten(js.init(Runner(swapped), KEY))
    shared = first.keys() & second.keys()
    event(f"shared paths: {min(len(shared), 5)}{'+' if len(shared) > 5 else ''}")
    for path in shared:
        if first[path].shape == second[path].shape:
            np.testing.assert_array_equal(first[path], second[path], err_msg=path)


@settings(max_examples=examples(4))
@given(programs, st.data())
def test_an_unrelated_variable_changes_nothing_else(program, data):
    note(to_source(program))
    at = data.draw(st.integers(0, len(program)), label="inserted at")
    grown = program[:at] + (Unrelated(),) + program[at:]
    kind, tree = _outcome(program)
    grown_kind, grown_tree = _outcome(grown)
    event(kind)
    assert grown_kind == kind
    if tree is None:
        return
    flat, grown_flat = js.flatten(tree), js.flatten(grown_tree)
    assert grown_flat.keys() == flat.keys() | {"params/unrelated/w"}
    for path, value in flat.items():
        np.testing.assert_array_equal(grown_flat[path], value, err_msg=path)


@settings(max_examples=examples(2.5))
@given(safe_programs, st.data())
def test_flatten_unflatten_round_trip(program, data):
    note(to_source(program))
    tree = js.init(Runner(program), KEY)
    flat = js.flatten(tree)
    rebuilt = js.unflatten(flat)
    assert _skeleton(rebuilt) == _skeleton(tree)
    assert list(js.flatten(rebuilt)) == list(flat)
    assert all(js.flatten(rebuilt)[k] is flat[k] for k in flat)
    per_collection = {
        f"{coll}/{path}": value
        for coll, sub in tree.items()
        for path, value in js.flatten(sub).items()
    }
    assert list(per_collection) == list(flat)
    for sub in tree.values():
        assert _skeleton(js.unflatten(js.flatten(sub))) == _skeleton(sub)
    if not flat:
        return
    path = data.draw(st.sampled_from(sorted(flat)), label="path")
    leaf = flat[path]
    with pytest.raises(js.errors.PathConflictError) as info:
        js.unflatten({**flat, f"{path}/x": leaf})
    assert f"Variable {path} and variable {path}/x" in str(info.value)
    parent = path.rsplit("/", 1)[0]
    with pytest.raises(js.errors.PathConflictError) as info:
        js.unflatten({**flat, parent: leaf})
    assert f"Variable {parent} and variable {parent}/" in str(info.value)
