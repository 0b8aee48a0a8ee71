"""`init`, `apply`, `transform` and `make_template`: the runs.

Each run makes a `context.Frame` with a fresh root scope, runs the function in
it (`Frame.entered`) and closes it, whatever happens. Given `ShardingRules`,
`init` runs under one `jax.jit` that places every variable in its shards, and
`partition_specs` runs it shape-only (`jax.eval_shape`). Imports: `errors`,
`context`, `names`, `tree`, `scope`, `variables`, `sharding`. Hot path:
`apply` without jit; without rules it costs one ``is None`` test per run.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np

from jscope import errors
from jscope._src import coldinit, context, jax_compat, meshes, plans, tree
from jscope._src.scope import VariableScope
from jscope._src.sharding import ShardingRules
from jscope._src.variables import get_variable
from jscope.typing import VariableTree

R = TypeVar("R")

_MSG_NOT_A_KEY = (
    "{where} got {got} where a JAX random key belongs. Pass a key such as "
    "jax.random.key(0) (jax.random.key(seed) turns an int seed into one)."
)


def _check_key(rng: Any, where: str) -> None:
    """Raises `RngTypeError` unless ``rng`` is a typed key or legacy key data."""
    dtype = getattr(rng, "dtype", None)
    if dtype is not None and hasattr(rng, "ndim"):
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return
        if dtype == np.uint32 and rng.ndim >= 1:  # jax.random.PRNGKey(0)'s data
            return
        got = f"an array of shape {tuple(rng.shape)} and dtype {dtype}"
    else:
        got = f"{type(rng).__name__} {rng!r}"
    raise errors.RngTypeError(_MSG_NOT_A_KEY.format(where=where, got=got))


def _check_rngs(rngs: Any, where: str) -> None:
    """Checks one key, or each key of a dict ``{stream: key}`` (None skipped)."""
    if isinstance(rngs, Mapping):
        for stream, key in rngs.items():
            if key is not None:
                _check_key(key, f"{where}[{stream!r}]")
    else:
        _check_key(rngs, where)


def _init_frame(rng: Any) -> context.Frame:
    root = VariableScope(False, "")
    if isinstance(rng, Mapping):
        if "params" not in rng:
            raise errors.MissingRngError(
                "js.init got a dict of rngs without a 'params' key; initializers need "
                f"one. Got keys {sorted(rng)}."
            )
        _check_rngs(rng, "js.init's rng")
        return context.Frame(
            is_run=True,
            scope=root,
            initializing=True,
            rng=rng["params"],
            rngs=dict(rng),
            get_variable=get_variable,
        )
    if rng is None:
        raise errors.MissingRngError(
            "js.init needs a random key, e.g. jax.random.key(0); got None."
        )
    _check_key(rng, "js.init's rng")
    return context.Frame(
        is_run=True,
        scope=root,
        initializing=True,
        rng=rng,
        get_variable=get_variable,
    )


def init_with_output(
    fn: Callable[..., R],
    rng: Any,
    *args: Any,
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> tuple[R, VariableTree]:
    """Runs ``fn`` creating its variables; returns ``(output, variables)``.

    See `init`. With ``rules``, ``fn`` runs under `jax.jit`, so its output
    must be a tree of arrays.
    """
    if rules is not None:
        return _init_sharded(fn, rng, args, kwargs, rules, True)
    frame = _init_frame(rng)
    with frame.entered(on_exit=frame.close):
        out = fn(*args, **kwargs)
        built = tree.unflatten(
            (f"{coll}/{path}", value) for path, (coll, value) in _ordered(frame)
        )
    return out, built


def _ordered(frame: context.Frame):
    # One collection after another, each in creation order.
    by_coll: dict[str, list] = {}
    for path, (coll, value) in frame.created.items():
        by_coll.setdefault(coll, []).append((path, (coll, value)))
    for items in by_coll.values():
        yield from items


def init(
    fn: Callable[..., Any],
    rng: Any,
    *args: Any,
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> VariableTree:
    """Runs ``fn`` once, creating every variable it asks for.

    Outside a trace, ``fn`` may first run shape-only (`jax.eval_shape`), and
    then only the initializers of its variables run: the same values, nothing
    of the forward pass compiled. Where that pass cannot stand for an eager
    run, ``fn`` runs eagerly after it (DESIGN §4.22).

    Given ``rules``, every variable is created directly in its shards on
    ``rules.mesh``: ``fn`` runs under one `jax.jit` (its array arguments are
    traced, the others are constants), each variable is constrained to its
    spec and XLA computes each device's shards only, so the whole model never
    exists on one device. The values are those of the same init without
    rules, bit for bit (keys derive from paths, not devices). Inside a
    caller's `jax.jit` the init is part of the caller's program, each variable
    constrained to its spec, compiled with JAX's defaults: on CPU a device's
    peak may then exceed its shards (threefry's temporaries, about 1.5×),
    which the init's own jit avoids.

    Args:
      fn: The function, calling `js.get_variable` / `js.Variable` inside.
      rng: A key (``jax.random.key(0)``) for the initializers, or a dict of keys
        per stream with a ``"params"`` key. Other streams (``"dropout"``) derive
        from it unless given.
      *args: Positional arguments for ``fn``.
      rules: `js.ShardingRules` over a `jax.sharding.Mesh`: create the
        variables in their shards, and make the rules current for
        `js.constrain`.
      **kwargs: Keyword arguments for ``fn``.

    Returns:
      A new variable tree ``{collection: {scope: {name: array}}}`` of initial
      values; assignments made while ``fn`` ran are not kept. With ``rules``
      each leaf's ``.sharding`` is ``NamedSharding(rules.mesh, spec)``.

    Raises:
      RngTypeError: ``rng`` is not a JAX key, e.g. an int seed: pass
        ``jax.random.key(seed)``.
      MissingRngError: ``rng`` is None, or a dict without ``"params"``.
      ShardingError: With ``rules``, a variable's spec does not fit it.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f(x):
      ...     with js.variable_scope("n1"):
      ...         w = js.get_variable("w", (x.shape[-1], 2))
      ...     return x @ w
      >>> v = js.init(f, jax.random.key(0), jnp.ones((1, 3)))
      >>> jax.tree.map(jnp.shape, v)
      {'params': {'n1': {'w': (3, 2)}}}
    """
    if rules is not None:
        return _init_sharded(fn, rng, args, kwargs, rules, False)[1]
    if coldinit.fast_path_open():  # shape-only pass, then the draws alone
        built = coldinit.init(fn, rng, args, kwargs, _init_frame, _ordered)
        if built is not None:
            return built
    return init_with_output(fn, rng, *args, **kwargs)[1]


# ------------------------------------------------------------------- sharded


def _check_rules(rules: Any, where: str) -> ShardingRules:
    if not isinstance(rules, ShardingRules):
        raise errors.ArgumentTypeError(
            f"{where}(rules=...) takes a js.ShardingRules, got {type(rules).__name__}."
        )
    return rules


def _split_arrays(tree_: Any) -> tuple[list, Callable[[list], Any]]:
    """Splits ``tree_``'s leaves into the traced ones and the constants.

    Arrays and `jax.ShapeDtypeStruct`s are traced; every other leaf stays the
    Python object it is, as in a run without rules. Returns the traced leaves
    and ``rebuild(traced) -> tree_``.
    """
    leaves, treedef = jax.tree.flatten(tree_)
    traced = [isinstance(leaf, jax.Array | jax.ShapeDtypeStruct) for leaf in leaves]

    def rebuild(arrays: list) -> Any:
        it = iter(arrays)
        return treedef.unflatten(
            [next(it) if t else leaf for leaf, t in zip(leaves, traced, strict=True)]
        )

    return [leaf for leaf, t in zip(leaves, traced, strict=True) if t], rebuild


def _traced_init(fn, rebuild, rules, plan, *, constrain=False):
    """The function of the arrays of ``(rng, args, kwargs)`` that inits ``fn``.

    Runs ``fn`` in an init frame whose rules are ``rules``; ``plan`` receives
    the ``(collection, path, spec)`` of every variable, one collection after
    another, each in creation order (`jax.jit` would sort the keys of a
    returned dict). Returns ``fn``'s output and the variables in that order,
    each constrained to its spec if ``constrain``.
    """

    def traced(arrays: list) -> tuple[Any, list]:
        rng, args, kwargs = rebuild(arrays)
        frame = _init_frame(rng)
        frame.rules = rules
        # The trace's mesh is the rules' (auto axes), also under jax.set_mesh or
        # given arrays typed over explicit axes. Without either, no mesh: typing
        # every value over auto axes would only cost trace time (~5 %).
        mesh = (
            jax.sharding.use_abstract_mesh(rules.mesh.abstract_mesh)
            if not rules.is_abstract and meshes.typed_over_a_mesh(arrays)
            else contextlib.nullcontext()
        )
        with mesh, frame.entered(on_exit=frame.close):
            out = fn(*args, **kwargs)
            axes_of, spec = frame.axes_of, rules.spec
            created = list(_ordered(frame))
            plan[:] = [
                (coll, path, spec(path, value.shape, axes_of.get(path)))
                for path, (coll, value) in created
            ]
            leaves = [value for _, (_, value) in created]
            if constrain:
                named = [rules.named(spec) for _, _, spec in plan]
                leaves = jax.lax.with_sharding_constraint(leaves, named)
        return out, leaves

    return traced


def _build(plan: list, leaves: list) -> dict:
    return tree.unflatten(
        (f"{coll}/{path}", leaf)
        for (coll, path, _), leaf in zip(plan, leaves, strict=True)
    )


def sharded_init_fn(
    fn: Callable[..., Any],
    rng: Any,
    args: tuple,
    kwargs: dict,
    rules: ShardingRules,
    *,
    with_output: bool = True,
) -> tuple[Callable[[list], tuple[Any, list]], list, list]:
    """The jitted sharded init of ``fn``, the arrays to call it with, its plan.

    Traces ``fn`` once, under `jax.jit`, which fills ``plan`` with the
    ``(collection, path, spec)`` of each variable; then jits the same traced
    function again (JAX's trace cache hands back its program: ``fn`` does not
    run twice, and no jit is nested) with ``out_shardings`` the variables'
    `NamedSharding`s. XLA's sharding
    propagation then computes each initializer in its shards only. (Inside a
    caller's trace, `js.init` constrains each variable in that trace instead:
    there the caller's jit is the one jit, so nothing is traced twice.)

    ``jitted(arrays)`` returns ``(output, leaves)`` (``output`` None unless
    ``with_output``), the leaves in ``plan``'s order. `init` calls it; the
    benchmarks time it.

    Raises:
      ShardingError: The rules are over an `AbstractMesh`, or a variable's
        spec does not fit it.
    """
    rules = _check_rules(rules, "js.init")
    if rules.is_abstract:
        raise errors.ShardingError(
            "js.init(rules=...) needs rules over a jax.sharding.Mesh of devices; "
            f"these are over an AbstractMesh {rules.mesh_shape}, which can only "
            "plan: call js.partition_specs with them, or build the rules over "
            "jax.make_mesh(...)."
        )
    arrays, rebuild = _split_arrays((rng, args, kwargs))
    plan: list = []
    traced = _traced_init(fn, rebuild, rules.for_init(), plan)
    if not with_output:
        traced_all = traced

        def traced(arrays: list) -> tuple[None, list]:
            return None, traced_all(arrays)[1]

    jax.jit(traced).trace(arrays)  # fills plan
    shardings = [rules.named(spec) for _, _, spec in plan]
    # The same function: jax's trace cache gives its program back, fn not rerun.
    return jax.jit(traced, out_shardings=(None, shardings)), arrays, plan


def _init_sharded(fn, rng, args, kwargs, rules, with_output):
    if not jax_compat.eager():
        return _init_in_trace(fn, rng, args, kwargs, rules)
    jitted, arrays, plan = sharded_init_fn(
        fn, rng, args, kwargs, rules, with_output=with_output
    )
    out, leaves = meshes.compile_sharded_init(jitted, arrays)(arrays)
    return out, _build(plan, leaves)


def _init_in_trace(fn, rng, args, kwargs, rules):
    """The sharded init inside a caller's trace (its `jax.jit`): part of it.

    ``fn`` is traced once, into the caller's program, and each variable is
    constrained to its spec there: a nested `jax.jit` with output shardings
    would need a second, inner trace to know the variables first.
    """
    rules = _check_rules(rules, "js.init")
    if rules.is_abstract:
        sharded_init_fn(fn, rng, args, kwargs, rules)  # raises
    arrays, rebuild = _split_arrays((rng, args, kwargs))
    plan: list = []
    traced = _traced_init(fn, rebuild, rules.for_init(), plan, constrain=True)
    out, leaves = traced(arrays)
    if rules.is_explicit:  # typed over the mesh's explicit axes, as given
        leaves = [
            jax.sharding.reshard(leaf, rules.named(spec))
            for leaf, (_, _, spec) in zip(leaves, plan, strict=True)
        ]
    return out, _build(plan, leaves)


def partition_specs(
    fn: Callable[..., Any],
    rng: Any,
    *args: Any,
    rules: ShardingRules,
    **kwargs: Any,
) -> dict[str, Any]:
    """The `PartitionSpec` of every variable ``fn`` creates, without FLOPs.

    Runs `js.init` of ``fn`` shape-only (`jax.eval_shape`) and resolves each
    variable's spec from its path, its shape (stacked variables: the stacked
    shape) and its logical axes, as `js.init(..., rules=rules)` places it.

    Args:
      fn: The function given to `js.init`.
      rng: Its key.
      *args: Its positional arguments (arrays may be `jax.ShapeDtypeStruct`s).
      rules: `js.ShardingRules`, over a `Mesh` or an `AbstractMesh`.
      **kwargs: Its keyword arguments.

    Returns:
      A tree keyed like `js.init`'s, leaves `PartitionSpec`.

    Raises:
      ShardingError: A variable's spec does not fit it.

    Example:
      >>> import jax, jscope as js
      >>> mesh = jax.sharding.AbstractMesh((4,), ("model",))
      >>> rules = js.ShardingRules(mesh, axes={"embed": None, "mlp": "model"})
      >>> def f():
      ...     js.get_variable("w", (8, 32), axes=("embed", "mlp"))
      ...     js.get_variable("b", (32,))
      >>> js.partition_specs(f, jax.random.key(0), rules=rules)
      {'params': {'w': P(None, 'model'), 'b': P()}}
    """
    rules = _check_rules(rules, "js.partition_specs")
    arrays, rebuild = _split_arrays((rng, args, kwargs))
    plan: list = []
    traced = _traced_init(fn, rebuild, rules.for_init(), plan)
    jax.eval_shape(lambda arrays: traced(arrays)[1], arrays)  # any output
    return _build(plan, [spec for _, _, spec in plan])


def _mutable_set(mutable: Any) -> frozenset[str] | Literal[True]:
    if mutable is True:
        return True
    if mutable is False or mutable is None:
        return frozenset()
    if isinstance(mutable, str):
        return frozenset((mutable,))
    if isinstance(mutable, Iterable):
        items = list(mutable)
        if all(isinstance(m, str) for m in items):
            return frozenset(items)
    raise TypeError(
        "mutable must be True, False, a collection name or a list of them, got "
        f"{mutable!r}."
    )


@overload
def apply(
    fn: Callable[..., R],
    variables: Mapping[str, Any],
    *args: Any,
    rngs: Any = None,
    mutable: Literal[False] = False,
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> R: ...


@overload
def apply(
    fn: Callable[..., R],
    variables: Mapping[str, Any],
    *args: Any,
    rngs: Any = None,
    mutable: Literal[True] | str | Sequence[str],
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> tuple[R, VariableTree]: ...


@overload
def apply(
    fn: Callable[..., R],
    variables: Mapping[str, Any],
    *args: Any,
    rngs: Any = None,
    mutable: bool | str | Sequence[str],
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> R | tuple[R, VariableTree]: ...


def apply(
    fn: Callable[..., Any],
    variables: Mapping[str, Any],
    *args: Any,
    rngs: Any = None,
    mutable: bool | str | Sequence[str] = False,
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> Any:
    """Runs ``fn`` reading every variable from ``variables``; creates nothing.

    Args:
      fn: The function given to `js.init`.
      variables: The variable tree. Never mutated.
      *args: Positional arguments for ``fn``.
      rngs: Keys for `js.next_rng_key`: a dict ``{stream: key}``, or one key from
        which every stream derives.
      mutable: Collections whose assignments are returned: False (none, the
        default), True (all), a name or a list of names.
      rules: `js.ShardingRules` made current for `js.constrain` while ``fn``
        runs (the variables keep the shardings they come with).
      **kwargs: Keyword arguments for ``fn``.

    Returns:
      ``fn``'s output; with ``mutable``, ``(output, updated_variables)`` where the
      updated tree is a new tree (the whole tree, with assignments applied).

    Raises:
      ArgumentTypeError: ``variables`` or one of its collections is not a
        mapping (a ``TypeError``).
      RngTypeError: ``rngs`` holds something other than a JAX key (an int).

    Warns:
      UnknownCollectionWarning: After a run that did not fail, ``mutable``
        names a collection the tree lacks whose name is close to one it has
        (``"stat"`` for ``"state"``): most likely misspelt. Other names the
        tree lacks are accepted silently (nothing comes back for them).

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f(x):
      ...     return x * js.get_variable("s", (), initializer=js.initializers.ones())
      >>> v = js.init(f, jax.random.key(0), 2.0)
      >>> js.apply(f, v, 3.0)
      Array(3., dtype=float32)
    """
    if rules is not None:
        rules = _check_rules(rules, "js.apply")
        if rules.is_explicit and not rules.is_abstract:
            return meshes.apply_over_auto(
                apply, fn, variables, args, kwargs, rngs, mutable, rules
            )
    if rules is None and (mutable is False or mutable is None):
        frame = plans.replaying(fn, variables, rngs)
        if frame is not None:  # a replay: the lighter frame, no context manager
            if rngs is not None:
                _check_rngs(rngs, "js.apply's rngs")
            token = context.make_current(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                context.restore_current(token)
                frame.close()
    mut = _mutable_set(mutable)
    given = tree.index(variables)
    if rngs is not None:
        _check_rngs(rngs, "js.apply's rngs")
    frame = context.Frame(
        is_run=True,
        scope=VariableScope(False, ""),
        given_tree=given,
        mutable=mut,
        rngs=rngs,
        get_variable=get_variable,
        rules=rules,
    )
    plan = (
        plans.begin(frame, fn, variables)
        if rules is None and type(frame.trace_state) is jax_compat.EVAL_TRACE
        else None
    )
    with frame.entered(on_exit=frame.close):
        out = fn(*args, **kwargs)
        if plan is not None:
            plan.finish()
        if mutable is False or mutable is None:
            return out
        if mut is not True and not mut <= given.keys():
            _warn_misspelt(mut, given)
        updates = {
            f"{frame.collection_of[path]}/{path}": value
            for path, value in frame.assigned.items()
        }
        return out, tree.replace_leaves(_copy_dicts(variables), updates)


def _warn_misspelt(mutable: frozenset[str], given: Mapping[str, Any]) -> None:
    """Warns of names in ``mutable`` that look like misspelt collections.

    A name the tree lacks is allowed: generic training code passes
    ``mutable=["state"]`` to models with and without state. A name close to a
    collection the tree has (``"stat"`` for ``"state"``) is most likely a slip:
    nothing can be assigned in it, so nothing comes back for it.
    """
    have = sorted(given)
    for name in sorted(mutable - given.keys()):
        close = difflib.get_close_matches(name, have, n=1)
        if close:
            warnings.warn(
                errors.UnknownCollectionWarning(
                    f"js.apply(mutable=...) names {name!r}, which the variable tree "
                    f"does not have (it has {have}); did you mean {close[0]!r}? "
                    "js.apply creates no variable, so nothing can be assigned in "
                    f"{name!r} and nothing comes back for it. Fix the spelling."
                ),
                stacklevel=3,
            )


def _copy_dicts(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_dicts(v) if isinstance(v, Mapping) else v for k, v in node.items()}
