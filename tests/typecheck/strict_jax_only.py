# pyright: strict
"""The JAX calls of `strict_script.py`, without jscope: the control for its check.

With older JAX or NumPy releases (jax 0.9, NumPy 2.0–2.3: `np.dtype` and
`np.ndarray` without default type arguments, ``out_sharding`` unannotated),
pyright's strict mode finds unknown types in JAX's own signatures. Whatever it
reports here is JAX's; `tests/test_typecheck.py` accepts exactly those
messages in `strict_script.py` and nothing else. Keep every JAX function that
`strict_script.py` calls in this file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def main() -> None:
    x = jax.random.normal(jax.random.key(2), (4, 3))
    h = jax.nn.relu(x)
    print(float(h.sum()), float(jnp.mean(h**2)))


if __name__ == "__main__":
    main()
