"""Checkpoints: what makes saves fast stays safe.

A non-blocking save holds the caller only for copies of the arrays (a donated
or changed value after it returns is not what gets written), and each array
is compressed only when that is worth it, in Orbax's own format: jscope and
plain Orbax read both kinds back bit-exactly.
"""

import errno
import os
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from helpers import assert_trees_equal, run_source

import jscope as js
from jscope import errors
from jscope._src.checkpoint import orbax_io


def other_dirs(directory):
    return sorted(
        n for n in os.listdir(directory) if n != "checkpoint" and not n.startswith("m")
    )


# ------------------------------------------------------- non-blocking saves


def test_donating_the_arrays_right_after_a_non_blocking_save(tmp_path):
    params = {
        "w": jax.random.normal(jax.random.key(0), (512, 512)),
        "b": jnp.arange(4096.0),
    }
    extra = np.arange(10_000, dtype=np.int32)  # NumPy: changed in place after
    expected = {"params": jax.tree.map(np.array, params), "extra": extra.copy()}
    step = jax.jit(lambda t: jax.tree.map(lambda x: x * 0 - 7, t), donate_argnums=0)
    saver = js.Saver()
    tree = {"params": params, "extra": extra}
    path = str(saver.save(tree, tmp_path / "m", 1, blocking=False))
    new = step(params)  # donates every array just saved (XLA may copy instead)
    extra[:] = -1
    params["b"].delete()  # or deletes it
    saver.wait_until_finished()
    target = jax.tree.map(np.zeros_like, expected)
    assert_trees_equal(saver.restore(path, target), expected, ordered=False)
    assert js.verify_checkpoint(path) == ["extra", "params/b", "params/w"]
    assert float(new["w"][0, 0]) == -7.0
    saver.close()


SHARDED = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_num_cpu_devices", 4)
    import jscope as js
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((4,), ("x",))
    sharded = NamedSharding(mesh, P("x"))
    w = jax.device_put(jnp.arange(4096.0).reshape(64, 64), sharded)
    expected = np.asarray(w).copy()
    step = jax.jit(lambda x: x * 0 - 1, donate_argnums=0)
    with js.Saver() as saver:
        path = saver.save({"w": w}, sys.argv[1] + "/m", blocking=False)
        new = step(w)  # the copy on the devices was taken first
        assert w.is_deleted()
        saver.wait_until_finished()
        got = saver.restore(path, {"w": jnp.zeros((64, 64))})["w"]
    assert np.array_equal(np.asarray(got), expected), np.asarray(got)
    assert float(np.asarray(new)[0, 0]) == -1.0
    print("DONATED OK")
    """
)


def test_donating_sharded_arrays_right_after_a_non_blocking_save(tmp_path):
    proc = run_source(SHARDED, tmp_path, timeout=120)
    assert "DONATED OK" in proc.stdout


def test_a_non_blocking_save_starts_orbax_off_the_callers_thread(tmp_path, monkeypatch):
    threads = []
    start = orbax_io.start_save

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return start(*args, **kwargs)

    monkeypatch.setattr(orbax_io, "start_save", recording)
    tree = {"w": jnp.arange(1000.0)}
    with js.Saver() as saver:
        saver.save(tree, tmp_path / "m", 1)
        saver.save(tree, tmp_path / "m", 2, blocking=False)
    assert threads[0] is threading.current_thread()
    assert threads[1] is not threading.current_thread()


def test_a_failed_start_of_a_non_blocking_save_surfaces_at_the_wait(
    tmp_path, monkeypatch
):
    """The error of Orbax's start, now in the commit, is raised by the wait."""
    saver = js.Saver(max_to_keep=2)
    first = saver.save({"w": jnp.ones(8)}, tmp_path / "m", 1)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(orbax_io, "start_save", full_disk)
    path = str(saver.save({"w": jnp.zeros(8)}, tmp_path / "m", 2, blocking=False))
    with pytest.raises(errors.CheckpointWriteError, match="the disk is full"):
        saver.wait_until_finished()
    saver.wait_until_finished()  # raised once
    assert js.latest_checkpoint(tmp_path) == first
    assert not os.path.exists(path)
    assert other_dirs(tmp_path) == [".checkpoint.lock"], os.listdir(tmp_path)
    monkeypatch.undo()
    assert saver.save({"w": jnp.zeros(8)}, tmp_path / "m", 2) == path  # not stuck
    assert saver.last_checkpoints == [first, path]
    saver.close()


# ---------------------------------------------------------- compression


def compressor(path, key):
    """The compressor in an array's zarr metadata (Orbax's OCDBT layout)."""
    kvstore = {"driver": "ocdbt", "base": f"file://{os.path.abspath(path)}"}
    array = ts.open(
        {"driver": "zarr", "kvstore": {**kvstore, "path": f"{key}/"}}, open=True
    ).result()
    return array.spec().to_json()["metadata"].get("compressor")


def mixed_tree():
    rng = np.random.default_rng(0)
    return {
        "random": jax.random.normal(jax.random.key(1), (256, 128)),
        "random_bf16": jax.random.normal(jax.random.key(2), (256, 128), jnp.bfloat16),
        "zeros": jnp.zeros((256, 128)),
        "constant": jnp.full((256, 128), 0.25),
        "numpy_constant": np.full((300, 100), -1.5),
        "numpy_random": rng.standard_normal((300, 100)),
        "ints": jnp.arange(256 * 128, dtype=jnp.int32),
        "small": jnp.linspace(0.0, 1.0, 64),
    }


@pytest.mark.parametrize("blocking", [True, False])
def test_each_array_is_compressed_only_if_worth_it(tmp_path, blocking):
    tree = mixed_tree()
    with js.Saver() as saver:
        path = saver.save(tree, tmp_path / "m", blocking=blocking)
    raw = {"random", "numpy_random"}
    for key in tree.keys() - {"random_bf16"}:  # bfloat16: fewer distinct values
        expected = None if key in raw else {"id": "zstd", "level": 1}
        assert compressor(path, key) == expected, key


def test_raw_and_compressed_arrays_restore_bit_exactly(tmp_path):
    tree = mixed_tree()
    expected = jax.tree.map(np.array, tree)
    with js.Saver() as saver:
        path = str(saver.save(tree, tmp_path / "m"))
        restored = saver.restore(path, jax.tree.map(np.zeros_like, expected))
    assert_trees_equal(restored, expected, ordered=False)
    assert js.verify_checkpoint(path) == sorted(tree)
    # Plain Orbax reads both kinds, with no help from jscope.
    plain = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    for key, value in expected.items():
        got = np.asarray(plain[key])
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), key


def test_worth_compressing():
    rng = np.random.default_rng(0)
    big = (512, 512)
    assert not orbax_io.worth_compressing(rng.standard_normal(big).astype(np.float32))
    assert orbax_io.worth_compressing(np.zeros(big, np.float32))
    assert orbax_io.worth_compressing(np.full(big, 3.0))
    assert orbax_io.worth_compressing(rng.integers(0, 1 << 30, big))  # integers
    assert orbax_io.worth_compressing(rng.standard_normal((8, 8)))  # small
    sparse = rng.standard_normal(big) * (rng.random(big) < 0.1)  # 90 % zeros
    assert orbax_io.worth_compressing(sparse)
    transposed = rng.standard_normal(big).T  # not C-contiguous: Orbax's default
    assert orbax_io.worth_compressing(transposed)
