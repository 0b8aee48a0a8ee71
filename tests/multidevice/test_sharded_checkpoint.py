"""Sharded checkpoints on 8 simulated devices: across meshes, onto one device, checked.

A tree sharded on a 2x4 mesh is saved and restored on a 4x2 mesh, on one
device, replicated, and into sharded arrays; its sharded arrays carry a
``murmur3_sum64`` checksum computed on their devices, which does not depend on
the sharding and catches flipped bits like the ``xxh3_64`` of single-device
arrays.
"""

import json
import os
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xxhash
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import jscope as js
from jscope._src.checkpoint import integrity

MESH_2X4 = jax.make_mesh((2, 4), ("data", "model"))
MESH_4X2 = jax.make_mesh((4, 2), ("data", "model"))
SPECS_2X4 = {
    "params/w": P("data", "model"),
    "params/emb": P("model", None),
    "params/b": P(),  # replicated: whole on every device, so xxh3_64
    "params/h": P(None, "data"),
    "state/keys": P("model"),
}
SPECS_4X2 = {
    "params/w": P("model", "data"),
    "params/emb": P("data", None),
    "params/b": P("data"),
    "params/h": P("model", None),
    "state/keys": P(("data", "model")),
}


def values():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "w": rng.normal(size=(8, 16)).astype(np.float32),
            "emb": rng.normal(size=(16, 6)).astype(jnp.bfloat16),
            "b": rng.normal(size=(8,)).astype(np.float32),
            "h": (rng.normal(size=(4, 8)) * 50).astype(np.int8),
        },
        "state": {"keys": jax.random.split(jax.random.key(3), 8)},
        "step": np.int32(7),
    }


def place(tree, mesh, specs):
    """The tree with each array put on ``mesh`` with its spec (host leaves kept)."""

    def put(path, leaf):
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        if key not in specs:
            return leaf
        return jax.device_put(leaf, NamedSharding(mesh, specs[key]))

    return jax.tree_util.tree_map_with_path(put, tree)


def targets(tree, sharding_of):
    """``jax.ShapeDtypeStruct`` targets with ``sharding_of(key)`` shardings."""

    def struct(path, leaf):
        key = "/".join(str(getattr(k, "key", k)) for k in path)
        if not isinstance(leaf, jax.Array | np.ndarray) or key == "step":
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding_of(key))

    return jax.tree_util.tree_map_with_path(struct, tree)


def assert_same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if isinstance(w, jax.Array) and jnp.issubdtype(w.dtype, jax.dtypes.prng_key):
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        assert np.asarray(g).dtype == np.asarray(w).dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def table_of(path):
    with open(os.path.join(path, "_CHECKSUMS"), "rb") as f:
        return json.loads(f.read().split(b"\n", 1)[1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sharded")
    tree = place(values(), MESH_2X4, SPECS_2X4)
    with js.Saver() as saver:
        path = saver.save(tree, directory / "model", global_step=1)
    return path


# ------------------------------------------------------------ across meshes


def test_a_2x4_checkpoint_restores_on_a_4x2_mesh_with_the_targets_shardings(saved):
    want = {k: NamedSharding(MESH_4X2, s) for k, s in SPECS_4X2.items()}
    target = targets(values(), want.__getitem__)
    got = js.Saver().restore(saved, target)
    assert_same(got, values())
    for key, sharding in want.items():
        leaf = got
        for part in key.split("/"):
            leaf = leaf[part]
        if key == "state/keys":  # a typed key array: its key data is sharded
            assert leaf.sharding.spec == sharding.spec
            assert leaf.sharding.mesh.shape == sharding.mesh.shape
        else:
            assert leaf.sharding == sharding, key
        assert len({s.device for s in leaf.addressable_shards}) == 8


def test_the_same_mesh_restores_the_saved_shardings(saved):
    want = {k: NamedSharding(MESH_2X4, s) for k, s in SPECS_2X4.items()}
    got = js.Saver().restore(saved, targets(values(), want.__getitem__))
    assert_same(got, values())
    assert got["params"]["w"].sharding == want["params/w"]
    shard = got["params"]["w"].addressable_shards[0]
    assert shard.data.shape == (4, 4)  # a shard, not the whole array


def test_a_sharded_checkpoint_restores_onto_one_device(saved):
    device = jax.devices()[5]
    got = js.Saver().restore(
        saved, targets(values(), lambda _: SingleDeviceSharding(device))
    )
    assert_same(got, values())
    assert got["params"]["w"].sharding == SingleDeviceSharding(device)
    # Without a sharding in the target: the default device.
    bare = js.Saver().restore(saved, targets(values(), lambda _: None))
    assert_same(bare, values())
    assert bare["params"]["w"].sharding == SingleDeviceSharding(jax.devices()[0])


def test_a_sharded_checkpoint_restores_replicated(saved):
    replicated = NamedSharding(MESH_4X2, P())
    got = js.Saver().restore(saved, targets(values(), lambda _: replicated))
    assert_same(got, values())
    assert got["params"]["w"].sharding == replicated
    assert got["params"]["w"].is_fully_replicated


def test_sharded_array_targets_give_their_shardings(saved):
    fresh = values()
    fresh["params"] = jax.tree.map(np.zeros_like, fresh["params"])
    fresh["state"]["keys"] = jax.random.split(jax.random.key(0), 8)
    target = place(fresh, MESH_4X2, SPECS_4X2)
    got = js.Saver().restore(saved, target)
    assert_same(got, values())
    assert got["params"]["emb"].sharding == target["params"]["emb"].sharding
    assert got["params"]["h"].sharding == target["params"]["h"].sharding


def test_a_single_device_checkpoint_restores_sharded_and_checked(tmp_path):
    path = js.Saver().save(values(), tmp_path / "one")
    table = table_of(path)
    assert {v.get("murmur3_sum64") for v in table["variables"].values()} == {None}
    want = {k: NamedSharding(MESH_2X4, s) for k, s in SPECS_2X4.items()}
    got = js.Saver().restore(path, targets(values(), want.__getitem__))
    assert_same(got, values())
    assert got["params"]["w"].sharding == want["params/w"]
    # Its xxh3_64 checksums are still checked for the sharded target.
    rewrite_checksum(path, "params/w", "xxh3_64")
    with pytest.raises(js.CheckpointCorruptError, match="variable params/w"):
        js.Saver().restore(path, targets(values(), want.__getitem__))


def test_a_save_on_4x2_restores_on_2x4_and_nonblocking_saves_too(tmp_path):
    tree = place(values(), MESH_4X2, SPECS_4X2)
    with js.Saver(max_to_keep=1) as saver:
        first = saver.save(tree, tmp_path / "m", global_step=1, blocking=False)
        second = saver.save(tree, tmp_path / "m", global_step=2, blocking=False)
        saver.wait_until_finished()
        assert saver.last_checkpoints == [second]
    assert not os.path.exists(first)
    want = {k: NamedSharding(MESH_2X4, s) for k, s in SPECS_2X4.items()}
    assert_same(js.Saver().restore(second, targets(values(), want.__getitem__)), tree)


# ------------------------------------------------------------------ integrity


def test_sharded_arrays_record_murmur3_sum64_and_whole_ones_xxh3_64(saved):
    variables = table_of(saved)["variables"]
    kinds = {
        key: "murmur3_sum64" if entry.get("murmur3_sum64") else "xxh3_64"
        for key, entry in variables.items()
    }
    assert kinds == {
        "params/w": "murmur3_sum64",
        "params/emb": "murmur3_sum64",
        "params/h": "murmur3_sum64",
        "state/keys": "murmur3_sum64",
        "params/b": "xxh3_64",  # replicated
        "step": "xxh3_64",  # a NumPy scalar
    }
    for entry in variables.values():
        assert sum(entry.get(k) is not None for k in ("xxh3_64", "murmur3_sum64")) == 1


def test_the_checksum_does_not_depend_on_the_sharding_and_sees_one_element():
    rng = np.random.default_rng(1)
    dtypes = ("float32", "bfloat16", "float16", "int8", "bool", "uint32")
    for dtype in (*dtypes, "int4", "float8_e4m3fn", "float4_e2m1fn"):
        x = rng.normal(size=(8, 16)) * (3 if "float" in dtype else 40)
        x = x > 0 if dtype == "bool" else x.astype(dtype)
        layouts = [
            jax.device_put(x, NamedSharding(MESH_2X4, P("data", "model"))),
            jax.device_put(x, NamedSharding(MESH_4X2, P(None, ("data", "model")))),
            jax.device_put(x, NamedSharding(MESH_4X2, P())),
            jax.device_put(x, jax.devices()[3]),
            x,  # NumPy, on the host
        ]
        found = {
            integrity.sum_hex(integrity.sum_checksums({"k": v}))["k"] for v in layouts
        }
        assert len(found) == 1, (dtype, found)
        changed = x.copy()
        if dtype == "bool":
            changed[5, 9] = not changed[5, 9]
        elif jnp.issubdtype(x.dtype, jnp.floating):
            changed[5, 9] = -changed[5, 9]  # the sign bit, even of a zero
        else:
            changed[5, 9] = 1 if changed[5, 9] == 0 else 0
        swapped = x.copy()
        swapped[[0, 7]] = swapped[[7, 0]]
        assert not np.array_equal(swapped.view(np.uint8), x.view(np.uint8))
        for other in (changed, swapped):
            sharded = jax.device_put(other, NamedSharding(MESH_2X4, P("data")))
            got = integrity.sum_hex(integrity.sum_checksums({"k": sharded}))["k"]
            assert got not in found, dtype


def test_the_checksum_covers_64_bit_and_complex_dtypes():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        for dtype in ("float64", "uint64", "int64", "complex64", "complex128"):
            x = (rng.normal(size=(8, 4)) * 1e6).astype(dtype)
            sharded = jax.device_put(x, NamedSharding(MESH_2X4, P("data", "model")))
            on_device = integrity.sum_hex(integrity.sum_checksums({"k": sharded}))
            on_host = integrity.sum_hex(integrity.sum_checksums({"k": x}))
            assert on_device == on_host, dtype
            y = x.copy()
            y[3, 1] = y[3, 1] * 3 + 1
            other = integrity.sum_hex(integrity.sum_checksums({"k": y}))
            assert other != on_host, dtype


def rewrite_checksum(path, key, kind):
    """Replaces ``key``'s recorded checksum with another (the file stays valid)."""
    target = os.path.join(path, "_CHECKSUMS")
    with open(target, "rb") as f:
        table = json.loads(f.read().split(b"\n", 1)[1])
    table["variables"][key][kind] = "0123456789abcdef"
    body = json.dumps(table, separators=(",", ":")).encode()
    head = b"jscope-checksums xxh3_64=" + xxhash.xxh3_64_hexdigest(body).encode()
    with open(target, "wb") as f:
        f.write(head + b"\n" + body)


def test_a_wrong_sharded_checksum_is_a_corrupt_error_naming_the_variable(
    tmp_path, saved
):
    work = tmp_path / "work"
    shutil.copytree(saved, work)
    rewrite_checksum(str(work), "params/emb", "murmur3_sum64")
    sharded = {k: NamedSharding(MESH_4X2, s) for k, s in SPECS_4X2.items()}
    for read in (
        lambda: js.Saver().restore(str(work), targets(values(), sharded.__getitem__)),
        lambda: js.Saver().restore(str(work), targets(values(), lambda _: None)),
        lambda: js.load_variable(str(work), "params/emb"),
        lambda: js.verify_checkpoint(str(work)),
    ):
        with pytest.raises(js.CheckpointCorruptError, match="variable params/emb"):
            read()
    assert js.load_variable(str(work), "params/w").shape == (8, 16)


def test_flipped_bits_in_a_sharded_checkpoint_are_corrupt_errors(tmp_path, saved):
    rng = random.Random(0)
    data = []
    for parent, _, names in os.walk(saved):
        data += [
            os.path.relpath(os.path.join(parent, n), saved)
            for n in names
            if "/d/" in f"/{os.path.relpath(parent, saved)}/"
        ]
    assert data, "no data files found"
    sharded = {k: NamedSharding(MESH_4X2, s) for k, s in SPECS_4X2.items()}
    for trial in range(12):
        work = tmp_path / f"work{trial}"
        shutil.copytree(saved, work)
        rel = sorted(data)[trial % len(data)]
        with open(work / rel, "r+b") as f:
            blob = bytearray(f.read())
            bit = rng.randrange(8 * len(blob))
            blob[bit // 8] ^= 1 << (bit % 8)
            f.seek(0)
            f.write(bytes(blob))
        for read in (
            lambda w=work: js.Saver().restore(
                str(w), targets(values(), sharded.__getitem__)
            ),
            lambda w=work: js.verify_checkpoint(str(w)),
        ):
            with pytest.raises(js.CheckpointCorruptError):
                read()
        shutil.rmtree(work)


def test_a_target_sharding_that_does_not_fit_is_a_mismatch_not_corruption(saved):
    unfit = NamedSharding(MESH_4X2, P(None, "data"))  # 6 columns over 4 devices
    target = targets(values(), lambda _: None)
    target["params"]["emb"] = jax.ShapeDtypeStruct(
        (16, 6), jnp.bfloat16, sharding=unfit
    )
    with pytest.raises(js.CheckpointMismatchError, match="params/emb") as info:
        js.Saver().restore(saved, target)
    assert "does not fit its shape (16, 6)" in str(info.value)


# ------------------------------------------------------------------- readers


def test_readers_of_a_sharded_checkpoint(saved):
    assert js.list_variables(saved) == [
        ("params/b", (8,)),
        ("params/emb", (16, 6)),
        ("params/h", (4, 8)),
        ("params/w", (8, 16)),
        ("state/keys", (8, 2)),
        ("step", ()),
    ]
    assert js.verify_checkpoint(saved) == [k for k, _ in js.list_variables(saved)]
    w = js.load_variable(saved, "params/w")
    np.testing.assert_array_equal(np.asarray(w), values()["params"]["w"])
    keys = js.load_variable(saved, "state/keys")
    np.testing.assert_array_equal(
        jax.random.key_data(keys), jax.random.key_data(values()["state"]["keys"])
    )
