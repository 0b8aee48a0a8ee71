"""Where variables live on a mesh: `ShardingRules`, logical axes, `constrain`.

This module owns the sharding of variables and activations. A variable's
logical axes (``axes=`` on `get_variable` and `Variable`: one name or None per
dimension) are checked here (`check_axes`, `check_reuse_axes`) and recorded in
the run's frame (``frame.axes_of``). `ShardingRules` turns a path, a shape and
those axes into a `jax.sharding.PartitionSpec`: the first ``paths`` regex that
matches the path, else the logical axes through the ``axes`` table, else
replicated. Trees stay plain dicts of `jax.Array`: the rules live beside them.

`constrain` reads the rules in force from the run's frame (``frame.rules``,
set by `js.init` / `js.apply` given ``rules=``).

Imports: `jscope.errors`, `axes`, `context`, `tree`, JAX. Hot path: none without
rules (`constrain` is one frame read); `check_axes` runs only when ``axes=``
is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import jax
from jax.sharding import PartitionSpec

from jscope import errors
from jscope._src import context, tree
from jscope._src.axes import LogicalAxes as LogicalAxes
from jscope._src.axes import check_axes as check_axes
from jscope._src.axes import check_reuse_axes as check_reuse_axes

# ---------------------------------------------------------------- ShardingRules


MeshAxes: TypeAlias = str | tuple[str, ...] | None
"""What one dimension maps to: a mesh axis, several (their product), or None."""

SpecLike: TypeAlias = PartitionSpec | Sequence[MeshAxes]
"""A spec: a `PartitionSpec`, or a tuple with one entry per dimension."""


class ShardingRules:
    """A mesh, path rules and logical-axis rules: where each variable lives.

    A variable's spec (`spec`) is, in order of precedence:

    1. the spec of the first ``paths`` rule whose regex matches its path, found
       with `re.search` (as Keras' ``LayoutMap``): anchor with ``^`` and ``$``
       to match a whole path. The path has no collection: ``block/attn/kernel``.
    2. else its logical ``axes=`` mapped through the ``axes`` table (as Flax's
       logical axis rules). When the rules have an ``axes`` table, every name a
       variable uses must be in it (map a name to None to replicate it); without
       one, logical names are not used.
    3. else replicated, ``PartitionSpec()``.

    A spec has one entry per dimension (None: not sharded; a mesh axis; or a
    tuple of mesh axes, sharded over their product), or none at all
    (replicated, whatever the rank).

    Specs come back canonical, as ``array.sharding.spec`` shows them: without
    trailing None entries (``P("model", None)`` is ``P("model")``).

    Args:
      mesh: A `jax.sharding.Mesh`, or a `jax.sharding.AbstractMesh` for
        shape-only planning (`js.partition_specs`).
      paths: ``[(regex, spec), ...]``; the first regex that matches decides.
      axes: ``{logical name: mesh axis, tuple of mesh axes, or None}``.

    Raises:
      ShardingError: A regex does not compile; a spec or an ``axes`` entry
        names a mesh axis the mesh lacks, or one mesh axis twice.
      ArgumentTypeError: ``mesh``, ``paths`` or ``axes`` has the wrong type.

    Example:
      >>> import jax
      >>> mesh = jax.sharding.AbstractMesh((2, 4), ("data", "model"))
      >>> rules = ShardingRules(
      ...     mesh,
      ...     paths=[(r"attn/.*kernel$", (None, "model"))],
      ...     axes={"embed": None, "mlp": "model"},
      ... )
      >>> rules.spec("block/attn/q/kernel", (8, 16))
      P(None, 'model')
      >>> rules.spec("block/mlp/kernel", (8, 32), ("embed", "mlp"))
      P(None, 'model')
      >>> rules.spec("block/scale", (8,))
      P()
    """

    __slots__ = (
        "mesh",
        "paths",
        "axes",
        "_sizes",
        "_compiled",
        "_auto",
        "_fitted",
        "_pinned",
        "_named",
        "_constrained",
    )

    def __init__(
        self,
        mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
        paths: Sequence[tuple[str, SpecLike]] = (),
        axes: Mapping[str, MeshAxes] | None = None,
    ):
        if not isinstance(mesh, jax.sharding.Mesh | jax.sharding.AbstractMesh):
            raise errors.ArgumentTypeError(
                "js.ShardingRules needs a jax.sharding.Mesh (e.g. "
                "jax.make_mesh((2, 4), ('data', 'model'))) or a "
                f"jax.sharding.AbstractMesh, got {type(mesh).__name__}."
            )
        self.mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh = mesh
        self._sizes: dict[str, int] = dict(mesh.shape)
        self._auto: ShardingRules | None = None
        # id(array) -> (array, spec) of each js.constrain output, in an apply over
        # explicit axes (`for_apply`); None otherwise
        self._pinned: dict[int, tuple[Any, PartitionSpec]] | None = None
        # (rule index or logical axes, shape) -> the spec checked to fit it
        self._fitted: dict[tuple, PartitionSpec] = {}
        self._named: dict[PartitionSpec, jax.sharding.NamedSharding] = {}
        # (logical axes, shape) -> (spec, NamedSharding) of a js.constrain
        self._constrained: dict[tuple, tuple[PartitionSpec, Any]] = {}
        if isinstance(paths, str | bytes | Mapping) or not all(
            isinstance(rule, tuple | list) and len(rule) == 2 for rule in paths
        ):
            raise errors.ArgumentTypeError(
                "js.ShardingRules(paths=...) must be a list of (regex, spec) pairs, "
                "e.g. [(r'attn/.*/kernel$', (None, 'model'))], got "
                f"{paths!r}."
            )
        self.paths: list[tuple[str, PartitionSpec]] = []
        self._compiled: list[tuple[re.Pattern, PartitionSpec]] = []
        for regex, spec in paths:
            what = f"paths rule {regex!r}"
            if not isinstance(regex, str):
                raise errors.ArgumentTypeError(
                    f"A js.ShardingRules paths rule must start with a regex (str), "
                    f"got {regex!r}."
                )
            try:
                compiled = re.compile(regex)
            except re.error as e:
                raise errors.ShardingError(
                    f"The regex of {what} does not compile: {e}. Fix the pattern "
                    "(it is matched with re.search against variable paths such as "
                    "'block/attn/kernel')."
                ) from None
            spec = self._check_spec(as_spec(spec, what), what)
            self.paths.append((regex, spec))
            self._compiled.append((compiled, spec))
        if axes is not None and not isinstance(axes, Mapping):
            raise errors.ArgumentTypeError(
                "js.ShardingRules(axes=...) must be a dict {logical name: mesh axis, "
                f"tuple of mesh axes, or None}}, got {type(axes).__name__}."
            )
        self.axes: dict[str, MeshAxes] | None = None
        if axes is not None:
            self.axes = {}
            for name, target in axes.items():
                what = f"the axes entry {name!r}: {target!r}"
                if not isinstance(name, str):
                    raise errors.ArgumentTypeError(
                        f"js.ShardingRules(axes=...) keys are logical axis names "
                        f"(str), got {name!r}."
                    )
                entry = as_spec((target,), what)
                self._check_spec(entry, what)
                self.axes[name] = entry[0]

    def __repr__(self) -> str:
        return (
            f"ShardingRules(mesh={self._sizes}, paths={self.paths!r}, "
            f"axes={self.axes!r})"
        )

    @property
    def mesh_shape(self) -> dict[str, int]:
        """``{mesh axis: size}``, in the mesh's order."""
        return dict(self._sizes)

    # ----------------------------------------------------------- resolution

    def spec(
        self, path: str, shape: Sequence[int], axes: LogicalAxes | None = None
    ) -> PartitionSpec:
        """The spec of the variable at ``path`` (no collection) of ``shape``.

        Args:
          path: The variable's path, e.g. ``block/attn/kernel``.
          shape: Its shape (stacked variables: the stacked shape).
          axes: Its logical axes, one per dimension, or None.

        Returns:
          The first matching ``paths`` rule's spec, else the logical axes'
          spec, else ``PartitionSpec()``.

        Raises:
          ShardingError: The spec does not fit the variable (rank, a
            dimension not divisible by the mesh axes' size) or a logical name
            is not in the ``axes`` table.
        """
        shape = tuple(shape)
        for i, (compiled, spec) in enumerate(self._compiled):
            if compiled.search(path) is not None:
                fitted = self._fitted.get((i, shape))
                if fitted is None:
                    origin = f"the paths rule {compiled.pattern!r}"
                    fitted = self._fit(spec, f"Variable {path}", path, shape, origin)
                    self._fitted[i, shape] = fitted
                return fitted
        if axes is None or self.axes is None:
            return _REPLICATED
        key = (tuple(axes), shape)
        fitted = self._fitted.get(key)
        if fitted is None:
            spec = self.logical_spec(axes, path=path)
            origin = f"its logical axes {tuple(axes)!r}"
            fitted = self._fit(spec, f"Variable {path}", path, shape, origin)
            self._fitted[key] = fitted
        return fitted

    def logical_spec(
        self, axes: Sequence[str | None], *, path: str | None = None
    ) -> PartitionSpec:
        """Maps logical axis names through the ``axes`` table to a spec.

        Raises:
          ShardingError: A name is not in the table, or two names map to one
            mesh axis.
        """
        table = self.axes or {}
        where = f"variable {path}" if path is not None else "js.constrain"
        entries = []
        for name in axes:
            if name is None:
                entries.append(None)
                continue
            if name not in table:
                raise errors.ShardingError(
                    f"The logical axis {name!r} of {where} (axes {tuple(axes)!r}) "
                    f"is not in the rules' axes table {table!r}. Add it, mapped to "
                    "a mesh axis or to None to replicate that dimension. Mesh: "
                    f"{self._sizes}.",
                    path,
                )
            entries.append(table[name])
        spec = PartitionSpec(*entries)
        used = _mesh_axes(spec)
        if len(used) != len(set(used)):
            raise errors.ShardingError(
                f"The logical axes {tuple(axes)!r} of {where} map to {spec}, which "
                f"uses mesh axis {_twice(used)!r} twice. A mesh axis may shard one "
                "dimension only: map one of the names to None or to another mesh "
                f"axis. Mesh: {self._sizes}.",
                path,
            )
        return spec

    def _fit(
        self,
        spec: PartitionSpec,
        subject: str,
        path: str | None,
        shape: tuple,
        origin: str,
    ) -> PartitionSpec:
        """Checks that ``spec`` fits an array of ``shape``; returns it canonical."""
        if len(spec) == 0:
            return spec
        head = f"{subject} of shape {shape} gets {spec} from {origin}, but"
        tail = f" Mesh: {self._sizes}."
        if len(spec) != len(shape):
            raise errors.ShardingError(
                f"{head} the spec has {len(spec)} entries for a shape of rank "
                f"{len(shape)}. Give one entry per dimension (None: not sharded), or "
                "narrow the rule's regex so it does not match this variable (a "
                f"js.scan stack has one more dimension, first).{tail}",
                path,
            )
        for dim, (size, entry) in enumerate(zip(shape, spec, strict=True)):
            if entry is None:
                continue
            names = (entry,) if isinstance(entry, str) else tuple(entry)
            ways = math.prod(self._sizes[n] for n in names)
            if size % ways:
                raise errors.ShardingError(
                    f"{head} dimension {dim} (size {size}) is not divisible by "
                    f"{ways}, the size of mesh axis {entry!r}. Pick sizes the mesh "
                    "axis divides, another mesh axis, or None for this "
                    f"dimension.{tail}",
                    path,
                )
        return canonical(spec)

    def _check_spec(self, spec: PartitionSpec, what: str) -> PartitionSpec:
        used = _mesh_axes(spec)
        for name in used:
            if name not in self._sizes:
                raise errors.ShardingError(
                    f"The spec {spec} of {what} names mesh axis {name!r}, which the "
                    f"mesh does not have. Mesh: {self._sizes}. Use one of "
                    f"{list(self._sizes)}, or None for no sharding."
                )
        if len(used) != len(set(used)):
            raise errors.ShardingError(
                f"The spec {spec} of {what} uses mesh axis {_twice(used)!r} twice; "
                "a mesh axis may shard one dimension only. Mesh: "
                f"{self._sizes}."
            )
        return spec

    # ----------------------------------------------------------- placement

    @property
    def is_abstract(self) -> bool:
        """Whether the mesh is an `AbstractMesh` (planning only, no devices)."""
        return isinstance(self.mesh, jax.sharding.AbstractMesh)

    @property
    def is_explicit(self) -> bool:
        """Whether some mesh axis is `AxisType.Explicit` (jax's default)."""
        return self.for_init() is not self

    def for_init(self) -> ShardingRules:
        """These rules over the mesh with every axis `AxisType.Auto`.

        `js.init` traces the model under them: the variables are laid out by
        the jit's ``out_shardings`` and XLA's sharding propagation computes
        each initializer in its shards only; explicit mesh axes would type
        every intermediate value replicated and build whole variables first.
        `js.constrain` at init constrains over this mesh.
        """
        if self._auto is None:
            auto = (jax.sharding.AxisType.Auto,) * len(self._sizes)
            if tuple(self.mesh.axis_types) == auto:
                self._auto = self
            else:
                self._auto = self._over(self.mesh.update(axis_types=auto))
        return self._auto

    def for_apply(self) -> ShardingRules:
        """A fresh copy of `for_init`'s rules that records `constrain`'s outputs.

        `js.apply` over a mesh of explicit axes runs the model under it, then
        gives each output the spec it was last constrained to (``_pinned``).
        """
        rules = self.for_init()._over(self.for_init().mesh)
        rules._pinned = {}
        return rules

    @property
    def pinned(self) -> dict[int, tuple[Any, PartitionSpec]]:
        """``{id(array): (array, spec)}`` of `constrain`'s outputs (`for_apply`)."""
        return self._pinned or {}

    def _over(self, auto_mesh: Any) -> ShardingRules:
        # These rules over ``auto_mesh`` (same axes, all Auto), sharing the tables.
        rules = object.__new__(ShardingRules)
        rules.paths, rules.axes, rules._compiled = self.paths, self.axes, self._compiled
        rules._sizes, rules._fitted = self._sizes, self._fitted
        rules.mesh, rules._pinned = auto_mesh, None
        rules._named, rules._constrained = {}, {}
        rules._auto = rules
        return rules

    def named(self, spec: PartitionSpec) -> jax.sharding.NamedSharding:
        """``NamedSharding(self.mesh, spec)``, one object per spec."""
        found = self._named.get(spec)
        if found is None:
            found = self._named[spec] = jax.sharding.NamedSharding(self.mesh, spec)
        return found

    def constrain(self, x: Any, logical_axes: Sequence[str | None]) -> Any:
        """``x`` constrained to the spec of ``logical_axes``; see `constrain`."""
        if self.axes is None:
            return x
        logical_axes = tuple(logical_axes)
        shape = tuple(getattr(x, "shape", ()))
        found = self._constrained.get((logical_axes, shape))
        if found is None:
            if len(logical_axes) != len(shape):
                raise errors.ShardingError(
                    f"js.constrain got logical axes {logical_axes!r} for an array "
                    f"of shape {shape}: give one name (or None) per dimension. "
                    f"Mesh: {self._sizes}."
                )
            spec = self.logical_spec(logical_axes)
            origin = f"the logical axes {logical_axes!r}"
            spec = self._fit(spec, "js.constrain: an array", None, shape, origin)
            named = None if self.is_abstract else self.named(spec)
            found = self._constrained[logical_axes, shape] = (spec, named)
        spec, named = found
        if named is None:
            return x
        if self.for_init() is self:
            out = jax.lax.with_sharding_constraint(x, named)
        else:  # explicit axes: `reshard` changes the type too
            out = jax.sharding.reshard(x, named)
        if self._pinned is not None:
            self._pinned[id(out)] = (out, spec)
        return out

    # ---------------------------------------------------------------- checks

    def unused(self, specs: Mapping[str, Any]) -> list[str]:
        """The regexes of ``paths`` that decide the spec of no variable.

        A rule is unused when its regex matches no path of ``specs``, or only
        paths an earlier rule already takes: silently unused rules are the
        common mistake (a misspelt scope, a missing ``$``).

        Args:
          specs: A tree keyed like `js.init`'s, ``{collection: {scope: ...}}``
            (its leaves are not read): `js.partition_specs`'s output, or the
            variables themselves.

        Returns:
          The unused regexes, in the order of ``paths``.

        Example:
          >>> import jax
          >>> mesh = jax.sharding.AbstractMesh((2,), ("model",))
          >>> rules = ShardingRules(mesh, paths=[("kernel$", ()), ("kernal$", ())])
          >>> rules.unused({"params": {"dense": {"kernel": None}}})
          ['kernal$']
        """
        deciding = set()
        for coll in specs.values():
            paths = tree.flatten(coll) if isinstance(coll, Mapping) else {}
            for path in paths:
                for i, (compiled, _) in enumerate(self._compiled):
                    if compiled.search(path) is not None:
                        deciding.add(i)
                        break
        return [regex for i, (regex, _) in enumerate(self.paths) if i not in deciding]


_REPLICATED = PartitionSpec()


def canonical(spec: PartitionSpec) -> PartitionSpec:
    """``spec`` without trailing None entries, as ``array.sharding.spec`` shows.

    Example:
      >>> canonical(PartitionSpec("model", None))
      P('model',)
    """
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def as_spec(spec: Any, what: str) -> PartitionSpec:
    """``spec`` as a `PartitionSpec`, from one or a tuple/list of entries.

    Raises:
      ArgumentTypeError: An entry is not None, a str or a tuple of str.
    """
    if isinstance(spec, PartitionSpec):
        return spec
    ok = isinstance(spec, tuple | list) and all(
        e is None
        or isinstance(e, str)
        or (isinstance(e, tuple | list) and all(isinstance(n, str) for n in e))
        for e in spec
    )
    if not ok:
        raise errors.ArgumentTypeError(
            f"The spec of {what} must be a PartitionSpec or a tuple with one entry "
            "per dimension, each None, a mesh axis name or a tuple of them, got "
            f"{spec!r}. E.g. (None, 'model')."
        )
    return PartitionSpec(*(tuple(e) if isinstance(e, list) else e for e in spec))


def _mesh_axes(spec: PartitionSpec) -> list[str]:
    out: list[str] = []
    for entry in spec:
        if entry is None or entry is PartitionSpec.UNCONSTRAINED:
            continue
        out.extend((entry,) if isinstance(entry, str) else entry)
    return out


def _twice(used: list[str]) -> str:
    return next(n for n in used if used.count(n) > 1)


def constrain(x: Any, logical_axes: Sequence[str | None]) -> Any:
    """Constrains an activation's sharding by its logical axes, under rules.

    Inside `js.apply` (or `js.init`) given ``rules=``, maps ``logical_axes``
    through the rules' ``axes`` table and applies
    `jax.lax.with_sharding_constraint` (`jax.sharding.reshard` on a mesh of
    explicit axes). Without rules, or rules without an ``axes`` table, returns
    ``x`` itself: model code can name its activations' axes and run unchanged
    on one device.

    Args:
      x: An array.
      logical_axes: One logical name (or None) per dimension of ``x``, e.g.
        ``("batch", "mlp")``.

    Returns:
      ``x``, constrained (a new array), or ``x`` itself without rules.

    Raises:
      ShardingError: Under rules, the names are not one per dimension, a name
        is not in the ``axes`` table, or the spec does not fit ``x``.

    Example:
      >>> import jax.numpy as jnp, jscope as js
      >>> x = jnp.ones((4, 8))
      >>> js.constrain(x, ("batch", "mlp")) is x  # no rules in force
      True
    """
    frame = context.peek()
    if frame is None or frame.rules is None:
        return x
    return frame.rules.constrain(x, logical_axes)


def shardings(tree_: Mapping[str, Any], rules: ShardingRules) -> dict[str, Any]:
    """A tree of `NamedSharding`s over ``rules.mesh``, for `jax.jit` and Orbax.

    Args:
      tree_: A tree keyed like `js.init`'s. Its leaves are `PartitionSpec`s
        (`js.partition_specs`'s output), or arrays / `jax.ShapeDtypeStruct`s:
        one with a `NamedSharding` (as `js.init(..., rules=rules)` returns
        them) keeps its spec; any other gets the spec of its path from the
        rules, where only ``paths`` rules can apply (the tree does not hold
        logical axes: use `js.partition_specs` for those).
      rules: The rules whose mesh the shardings are over.

    Returns:
      A new tree of the same keys, leaves `NamedSharding(rules.mesh, spec)`.

    Raises:
      ShardingError: A spec does not fit its array.
      ArgumentTypeError: ``tree_`` is not a dict, or ``rules`` is not a
        `ShardingRules`.

    Example:
      >>> import jax
      >>> from jax.sharding import PartitionSpec as P
      >>> rules = ShardingRules(jax.make_mesh((1,), ("model",)))
      >>> shardings({"params": {"w": P("model")}}, rules)["params"]["w"].spec
      P('model',)
    """
    if not isinstance(rules, ShardingRules):
        raise errors.ArgumentTypeError(
            f"js.shardings needs a js.ShardingRules, got {type(rules).__name__}."
        )
    out = {}
    for path, leaf in tree.flatten(tree_).items():
        var = path.split("/", 1)[1] if "/" in path else path
        if isinstance(leaf, PartitionSpec):
            spec = leaf
        else:
            found = getattr(leaf, "sharding", None)
            if isinstance(found, jax.sharding.NamedSharding):
                spec = found.spec
            else:
                spec = rules.spec(var, tuple(leaf.shape))
        out[path] = rules.named(spec)
    return tree.unflatten(out)
