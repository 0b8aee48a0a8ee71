"""Checks shared by the layer tests: tolerant comparisons and fast jit.

Helpers for every test module (error regexes, tree equality) are in ``helpers``.
"""

import jax
import numpy as np

import jscope as js


def close(a, b, tol):
    """Asserts ``a`` and ``b`` are equal within ``tol`` (rtol/atol), as float32."""
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), **tol
    )


def tree_close(a, b, tol, same):
    """Asserts two pytrees match: structure, ``same`` ("dtype"/"shape"), values."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert getattr(u, same) == getattr(w, same)
        close(u, w, tol)


# The test programs are tiny: compile them fast rather than optimise them.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_fast(f):
    """`jax.jit` with the fast-compile options."""
    return jax.jit(f, compiler_options=FAST)


def init_fast(fn, *args, seed=0, **kwargs):
    """`js.init` under one `jax.jit` (one compilation instead of one per op)."""
    return jit_fast(lambda key: js.init(fn, key, *args, **kwargs))(jax.random.key(seed))
