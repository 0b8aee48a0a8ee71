"""Checks shared by the layer tests: tolerant comparisons and fast jit.

Helpers for every test module (error regexes, tree equality) are in ``helpers``.
"""

import jax
import jax.numpy as jnp
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


class Tolerance:
    """A test module's tolerances: ``(rtol, atol)`` for bfloat16, and for the rest.

    ``tol = Tolerance(bf16=(3e-2, 5e-2), other=(1e-5, 1e-5))``; ``tol(dtype)`` is
    the ``{"rtol", "atol"}`` for a dtype, and ``tol.close`` / ``tol.tree_close``
    compare with it.
    """

    def __init__(self, *, bf16, other, same="dtype"):
        self.bf16 = {"rtol": bf16[0], "atol": bf16[1]}
        self.other = {"rtol": other[0], "atol": other[1]}
        self.same = same  # what tree_close requires equal besides the values

    def __call__(self, dtype):
        return self.bf16 if dtype == jnp.bfloat16 else self.other

    def close(self, a, b, dtype=jnp.float32):
        close(a, b, self(dtype))

    def tree_close(self, a, b, dtype=jnp.float32):
        tree_close(a, b, self(dtype), same=self.same)


# The test programs are tiny: compile them fast rather than optimise them.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_fast(f):
    """`jax.jit` with the fast-compile options."""
    return jax.jit(f, compiler_options=FAST)


def init_fast(fn, *args, seed=0, **kwargs):
    """`js.init` under one `jax.jit` (one compilation instead of one per op)."""
    return jit_fast(lambda key: js.init(fn, key, *args, **kwargs))(jax.random.key(seed))


def numpy_normal(shape, dtype=jnp.float32, seed=1):
    """Normal inputs made by NumPy (no per-shape compilation)."""
    x = np.random.default_rng(seed).standard_normal(shape, np.float32)
    return jnp.asarray(x, dtype)


def _loss(f, ct):
    def loss(params, x):
        return jnp.sum(f(params, x).astype(jnp.float32) * ct)

    return loss


def check_params_and_input(ours, theirs, params, x, tol):
    """Values and gradients (w.r.t. params and inputs) of two ``f(params, x)``.

    Both sides run in one jitted program, with their gradients; values and
    gradients must agree in dtype and within ``tol``. Returns our output.
    """

    @jax.jit
    def both(params, x, ct):
        return [
            (f(params, x), jax.grad(_loss(f, ct), argnums=(0, 1))(params, x))
            for f in (ours, theirs)
        ]

    ct = numpy_normal(jax.eval_shape(ours, params, x).shape, seed=99)
    (y1, g1), (y2, g2) = both(params, x, ct)
    assert y1.shape == y2.shape
    assert y1.dtype == y2.dtype
    close(y1, y2, tol)
    tree_close(g1, g2, tol, same="dtype")
    return y1


def check_every_argument(ours, theirs, args, tol, same):
    """Outputs and gradients w.r.t. every argument of two ``f(*args)``.

    ``f`` returns a pytree of arrays; the loss is its dot product with fixed
    random cotangents. Both sides run in one `jax.jit`; outputs agree in shape
    and dtype, outputs and gradients in ``same`` and within ``tol``.
    """
    shapes = jax.tree.leaves(jax.eval_shape(ours, *args))
    argnums = tuple(range(len(args)))

    def value_and_grads(f, args):
        def loss(*args):
            ys = jax.tree.leaves(f(*args))
            cts = [jax.random.normal(jax.random.key(50 + i), s.shape) for i, s in
                   enumerate(shapes)]  # fmt: skip
            return sum(
                jnp.sum(y.astype(jnp.float32) * c) for y, c in zip(ys, cts, strict=True)
            )

        return f(*args), jax.grad(loss, argnums=argnums)(*args)

    both = jit_fast(lambda *a: (value_and_grads(ours, a), value_and_grads(theirs, a)))
    (y1, g1), (y2, g2) = both(*args)
    for u, w in zip(jax.tree.leaves(y1), jax.tree.leaves(y2), strict=True):
        assert u.shape == w.shape and u.dtype == w.dtype
    tree_close(y1, y2, tol, same)
    tree_close(g1, g2, tol, same)
