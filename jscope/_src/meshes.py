"""Running over a mesh: explicit axes' Auto twin, the sharded init's compile.

`apply_over_auto` runs `js.apply` given rules over a mesh of explicit axes
(jax's default) as `js.init` does, over the same mesh with Auto axes;
`lower_sharded_init` and `compile_sharded_init` lower and compile the sharded
init so that a device's peak is its shards. Imports: `jax_compat`, `tree`, JAX.
"""

from __future__ import annotations

from typing import Any

import jax

from jscope._src import jax_compat, tree

# XLA would hoist each stacked variable's random counters (loop-invariant) out of
# a js.scan loop, keeping one layer's worth of them alive through the whole init.
_INIT_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def lower_sharded_init(jitted: Any, arrays: list) -> Any:
    """``jitted.trace(arrays).lower()``, threefry unrolled: what `js.init` compiles.

    On CPU, JAX lowers the threefry hash as a rolled loop whose carried
    buffers are temporaries the size of each draw (half the held bytes of a
    sharded init); lowered as on GPU and TPU, unrolled, the bits go straight
    into each variable's shard. The values are the same. The unrolled rule
    is a parameter of this lowering only (thread-safe: no global rule swapped).
    """
    return jitted.trace(arrays).lower(**jax_compat.unrolled_threefry_lowering())


def compile_sharded_init(jitted: Any, arrays: list) -> Any:
    """`lower_sharded_init`, compiled without hoisting a scan's random counters."""
    return lower_sharded_init(jitted, arrays).compile(_INIT_COMPILER_OPTIONS)


def typed_over_a_mesh(arrays: list) -> bool:
    """Whether a mesh is in force, or an array's type names explicit axes."""
    if not jax.sharding.get_abstract_mesh().empty:
        return True
    return any(
        isinstance(a, jax.Array) and jax.typeof(a).sharding.mesh.explicit_axes
        for a in arrays
    )


def apply_over_auto(apply, fn, variables, args, kwargs, rngs, mutable, rules):
    """``apply`` (`js.apply`) over a mesh with explicit axes, on its Auto twin.

    Explicit axes make JAX ask the model's code for the output sharding of an
    ambiguous operation (a gather from a sharded table, a contraction over a
    sharded dimension); with Auto axes XLA propagates it, as at `init`. So the
    arrays typed over explicit axes (variables, arguments, keys) are resharded
    to the Auto mesh, which moves no data, ``fn`` runs there, and what comes
    back is typed over the explicit axes again: an updated variable as it came
    in; an output as its last `js.constrain` in ``fn`` pinned it, else its
    first dimension as the first sharded array argument's first dimension
    (the batch) when their sizes agree, else replicated.
    """
    auto = rules.for_apply()
    abstract = auto.mesh.abstract_mesh
    lead = _batch_entry((args, kwargs))

    def to_auto(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.typeof(x).sharding.mesh.explicit_axes:
            return jax.sharding.reshard(x, jax.sharding.PartitionSpec())
        return x

    with jax.sharding.use_abstract_mesh(abstract):
        given, args, kwargs, rngs = jax.tree.map(
            to_auto, (variables, args, kwargs, rngs)
        )
        result = apply(
            fn, given, *args, rngs=rngs, mutable=mutable, rules=auto, **kwargs
        )
    pinned = auto.pinned

    def to_explicit(x: Any) -> Any:
        if not isinstance(x, jax.Array) or jax.typeof(x).sharding.mesh != abstract:
            return x
        found = pinned.get(id(x))
        if found is not None and found[0] is x:
            spec = found[1]
        elif lead is not None and x.ndim and x.shape[0] == lead[0]:
            spec = jax.sharding.PartitionSpec(lead[1])
        else:
            spec = jax.sharding.PartitionSpec()
        return jax.sharding.reshard(x, rules.named(spec))

    if mutable is False or mutable is None:
        return jax.tree.map(to_explicit, result)
    out, updated = result
    came_in, went_in = tree.flatten(variables), tree.flatten(given)
    changed = {
        path: jax.sharding.reshard(value, rules.named(_typed_spec(came_in[path])))
        for path, value in tree.flatten(updated).items()
        if value is not went_in[path]
    }
    return jax.tree.map(to_explicit, out), tree.replace_leaves(variables, changed)


def _typed_spec(x: Any) -> jax.sharding.PartitionSpec:
    """The spec in ``x``'s type over explicit axes; ``P()`` for any other."""
    if isinstance(x, jax.Array):
        sharding = jax.typeof(x).sharding
        if sharding.mesh.explicit_axes:
            return sharding.spec
    return jax.sharding.PartitionSpec()


def _batch_entry(tree_: Any) -> tuple[int, Any] | None:
    """``(size, mesh axes)`` of the first explicitly sharded first dimension."""
    for leaf in jax.tree.leaves(tree_):
        if isinstance(leaf, jax.Array) and leaf.ndim:
            entry = jax.typeof(leaf).sharding.spec
            if len(entry) and entry[0] is not None:
                return leaf.shape[0], entry[0]
    return None
