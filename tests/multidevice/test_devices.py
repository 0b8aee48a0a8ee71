"""The multi-device session itself: 8 CPU devices, and a mesh over them."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def test_a_2x4_mesh_shards_an_array_over_eight_devices():
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    x = jax.device_put(
        np.arange(64.0).reshape(8, 8), NamedSharding(mesh, P("data", "model"))
    )
    assert len(x.addressable_shards) == 8
    assert {s.data.shape for s in x.addressable_shards} == {(4, 2)}
    np.testing.assert_array_equal(np.asarray(x), np.arange(64.0).reshape(8, 8))
