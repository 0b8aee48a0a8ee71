"""One process of the multi-process checkpoint test (``tests/test_multiprocess.py``).

Usage::

    python tests/multiprocess_worker.py single-save WORK
    python tests/multiprocess_worker.py multi WORK PORT PROCESS_ID   # 2 processes
    python tests/multiprocess_worker.py single-restore WORK

``single-*`` run in one process with 8 CPU devices; ``multi`` in one of two
processes with 4 CPU devices each, under ``jax.distributed`` with gloo
collectives. Each builds the same model sharded on a 2x4 mesh (created in its
shards by one jitted init), takes one jitted optax step on a batch that each
process loads only its part of, and saves; the other kind of run restores that
checkpoint onto a 4x2 mesh (and onto one device) and compares it with the
values the saving run wrote to ``WORK/<run>.npz``. Prints ``OK <what>`` lines;
any failure is an exception (non-zero exit).
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

MESH_AXES = ("data", "model")
# Variable specs by name; the optimizer's moments take their parameter's spec.
SPECS = {
    "w1": (None, "model"),
    "b1": ("model",),
    "w2": ("model", None),
    "b2": (),
}
BATCH, WIDTH, HIDDEN, OUT = 16, 16, 32, 8


def setup(devices: int, port: int | None = None, process_id: int | None = None):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax  # noqa: PLC0415 (after the flags)

    if port is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=process_id,
            initialization_timeout=120,
        )
    assert jax.device_count() == 8, jax.devices()
    return jax


def model(x):
    import jax  # noqa: PLC0415

    import jscope as js  # noqa: PLC0415

    init = js.initializers.random_normal(stddev=0.3)
    w1 = js.get_variable("w1", (WIDTH, HIDDEN), initializer=init)
    b1 = js.get_variable("b1", (HIDDEN,), initializer=init)
    w2 = js.get_variable("w2", (HIDDEN, OUT), initializer=init)
    b2 = js.get_variable("b2", (OUT,), initializer=init)
    return jax.nn.relu(x @ w1 + b1) @ w2 + b2


def make_mesh(jax, shape):
    auto = (jax.sharding.AxisType.Auto,) * 2  # shardings propagated by XLA
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)


def spec_of(jax, path, leaf):
    """The spec of a leaf: its variable's (by name, moments too), else replicated."""
    P = jax.sharding.PartitionSpec
    name = str(getattr(path[-1], "key", "")) if path else ""
    if name in SPECS and len(SPECS[name]) <= np.ndim(leaf):
        return P(*SPECS[name])
    return P()


def shardings_of(jax, tree, mesh):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.sharding.NamedSharding(mesh, spec_of(jax, p, x)), tree
    )


def global_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
    y = rng.normal(size=(BATCH, OUT)).astype(np.float32)
    return x, y


def train(jax):
    """A sharded init and one optax step on a 2x4 mesh: ``(mesh, tree)``."""
    import optax  # noqa: PLC0415

    import jscope as js  # noqa: PLC0415

    mesh = make_mesh(jax, (2, 4))
    sample = np.zeros((1, WIDTH), np.float32)
    shapes = jax.eval_shape(lambda k: js.init(model, k, sample), jax.random.key(0))
    param_shardings = shardings_of(jax, shapes, mesh)
    variables = jax.jit(
        lambda k: js.init(model, k, sample), out_shardings=param_shardings
    )(jax.random.key(0))
    for leaf in jax.tree.leaves(variables):  # created in its shards
        assert leaf.sharding in jax.tree.leaves(param_shardings)
    opt = optax.adam(0.1)
    opt_shapes = jax.eval_shape(opt.init, variables["params"])
    opt_shardings = shardings_of(jax, opt_shapes, mesh)
    opt_state = jax.jit(opt.init, out_shardings=opt_shardings)(variables["params"])

    # Process-local loading: each process makes only the rows its devices hold.
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x_all, y_all = global_batch()
    x = jax.make_array_from_callback(x_all.shape, data, lambda i: x_all[i])
    y = jax.make_array_from_callback(y_all.shape, data, lambda i: y_all[i])

    def loss(params, x, y):
        return ((js.apply(model, {"params": params}, x) - y) ** 2).mean()

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    step = jax.jit(
        step,
        in_shardings=(param_shardings["params"], opt_shardings, data, data),
        out_shardings=(param_shardings["params"], opt_shardings, None),
    )
    params, opt_state, value = step(variables["params"], opt_state, x, y)
    tree = {"params": params, "opt": opt_state, "step": np.int32(1)}
    return mesh, tree, float(np.asarray(value.addressable_data(0)))


def flat(jax, tree) -> dict[str, object]:
    return {
        jax.tree_util.keystr(p): leaf
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def dump(jax, tree, path: str) -> None:
    """Writes the tree's whole values (gathered: a test's reference) to ``path``."""
    from jax.experimental import multihost_utils  # noqa: PLC0415

    values = {}
    for key, leaf in flat(jax, tree).items():
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        values[key] = np.asarray(leaf)
    if jax.process_index() == 0:
        np.savez(path + ".tmp.npz", **values)
        os.replace(path + ".tmp.npz", path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"dumped {path}")


def compare(jax, tree, reference: str, *, exact: bool = True) -> None:
    """Checks each shard this process holds against the reference's values."""
    with np.load(reference) as ref:
        want = dict(ref)
    got = flat(jax, tree)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for key, leaf in got.items():
        shards = (
            [(s.index, s.data) for s in leaf.addressable_shards]
            if isinstance(leaf, jax.Array)
            else [((), leaf)]
        )
        for index, data in shards:
            expected = want[key][index]
            if exact:
                np.testing.assert_array_equal(np.asarray(data), expected, err_msg=key)
            else:
                np.testing.assert_allclose(
                    np.asarray(data), expected, rtol=1e-5, atol=1e-6, err_msg=key
                )


def targets(jax, tree, mesh):
    """``jax.ShapeDtypeStruct`` targets of the tree's leaves on ``mesh``."""
    shardings = shardings_of(jax, tree, mesh)

    def struct(leaf, sharding):
        if not isinstance(leaf, jax.Array):
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree.map(struct, tree, shardings)


def sharded_kinds(path: str) -> set[str]:
    import json  # noqa: PLC0415

    with open(os.path.join(path, "_CHECKSUMS"), "rb") as f:
        table = json.loads(f.read().split(b"\n", 1)[1])
    return {k for k, v in table["variables"].items() if v.get("murmur3_sum64")}


def single_save(work: str) -> None:
    jax = setup(8)
    import jscope as js  # noqa: PLC0415

    _, tree, value = train(jax)
    with js.Saver() as saver:
        path = saver.save(tree, os.path.join(work, "single", "model"), global_step=1)
    assert "params/w1" in sharded_kinds(path), sharded_kinds(path)
    # The same values saved from the host: xxh3_64 checksums only.
    on_host = jax.tree.map(np.asarray, tree)
    path = js.Saver().save(on_host, os.path.join(work, "host", "model"))
    assert not sharded_kinds(path), sharded_kinds(path)
    dump(jax, tree, os.path.join(work, "single.npz"))
    print(f"OK single-save loss={value:.6f}", flush=True)


def multi(work: str, port: int, process_id: int) -> None:
    jax = setup(4, port, process_id)
    from jax.experimental import multihost_utils  # noqa: PLC0415

    import jscope as js  # noqa: PLC0415

    assert jax.process_count() == 2 and jax.local_device_count() == 4
    _, tree, value = train(jax)
    # The same numbers as the one-process run (up to the order of reductions).
    compare(jax, tree, os.path.join(work, "single.npz"), exact=False)
    print(f"OK multi {process_id} step loss={value:.6f}", flush=True)

    with js.Saver(max_to_keep=2) as saver:
        directory = os.path.join(work, "multi")
        prefix = os.path.join(directory, "model")
        first = saver.save(tree, prefix, global_step=1)
        path = saver.save(tree, prefix, global_step=2)
        assert (first, path) == (f"{prefix}-1", f"{prefix}-2"), (first, path)
        assert saver.last_checkpoints == [first, path]
        # Non-blocking too: every process returns once process 0 committed it.
        pending = saver.save(tree, os.path.join(directory, "model"), 3, blocking=False)
        saver.wait_until_finished()
    assert js.latest_checkpoint(directory) == pending
    assert not os.path.exists(first)  # max_to_keep, process 0
    assert "params/w1" in sharded_kinds(pending)
    reference = os.path.join(work, "multi.npz")
    dump(jax, tree, reference)
    print(f"OK multi {process_id} save", flush=True)

    # The one-process checkpoint restores here, on another mesh shape.
    mesh_4x2 = make_mesh(jax, (4, 2))
    saved = os.path.join(work, "single", "model-1")
    restored = js.Saver().restore(saved, targets(jax, tree, mesh_4x2))
    for got, want in zip(
        jax.tree.leaves(restored),
        jax.tree.leaves(targets(jax, tree, mesh_4x2)),
        strict=True,
    ):
        if isinstance(got, jax.Array):
            assert got.sharding == want.sharding, (got.sharding, want.sharding)
            assert not got.is_fully_addressable or got.is_fully_replicated
    compare(jax, restored, os.path.join(work, "single.npz"))
    # Saved from the host (xxh3_64), restored sharded over both processes: each
    # array is gathered once to check it.
    from_host = js.Saver().restore(
        os.path.join(work, "host", "model"), targets(jax, tree, mesh_4x2)
    )
    compare(jax, from_host, os.path.join(work, "single.npz"))
    # Its own checkpoint, checked, into sharded array targets.
    again = js.Saver().restore(pending, tree)
    compare(jax, again, os.path.join(work, "multi.npz"))
    assert js.verify_checkpoint(pending) == [k for k, _ in js.list_variables(pending)]
    # Readers of one process alone wait for no other process.
    if process_id == 1:
        w1 = js.load_variable(pending, "params/w1")
        np.testing.assert_array_equal(
            np.asarray(w1), np.load(reference)["['params']['w1']"]
        )
        assert js.verify_checkpoint(pending)
    multihost_utils.sync_global_devices("alone")
    print(f"OK multi {process_id} restore", flush=True)

    # A save that process 0 cannot start (an unreadable state file) fails in
    # every process, and the next save works.
    broken = os.path.join(work, "broken")
    if process_id == 0:
        os.makedirs(broken)
        with open(os.path.join(broken, "checkpoint"), "w") as f:
            f.write("{not json")
    multihost_utils.sync_global_devices("broken")
    try:
        js.Saver().save(tree, os.path.join(broken, "model"))
    except js.CheckpointError as e:
        assert ("process 0" in str(e)) == (process_id == 1), str(e)
        print(f"OK multi {process_id} refused: {str(e)[:160]}", flush=True)
    else:
        raise AssertionError("a save over an unreadable state succeeded")
    js.Saver().save(tree, os.path.join(work, "after", "model"), write_state=False)
    print(f"OK multi {process_id} saved after", flush=True)

    # Damage is seen by every process: a wrong recorded checksum (the check is
    # one collective), and a flipped bit in one process's data file (each
    # process reads only some chunks; all raise, none waits for the others).
    for name, damage in (("checksum", wrong_checksum), ("bit", flipped_bit)):
        copy = os.path.join(work, f"damaged-{name}", "model")
        if process_id == 0:
            shutil.copytree(pending, copy)
            damage(copy)
        multihost_utils.sync_global_devices(f"damaged-{name}")
        try:
            js.Saver().restore(copy, targets(jax, tree, mesh_4x2))
        except js.CheckpointCorruptError as e:
            said = f"key={e.key} {str(e)[:300]}"
            print(f"OK multi {process_id} damaged {name}: {said}", flush=True)
        else:
            raise AssertionError(f"a damaged checkpoint ({name}) was restored")
    multihost_utils.sync_global_devices("done")
    jax.distributed.shutdown()


def rewrite_table(path: str, change) -> None:
    """Rewrites the checkpoint's ``_CHECKSUMS`` with ``change(table)`` applied."""
    import json  # noqa: PLC0415

    import xxhash  # noqa: PLC0415

    target = os.path.join(path, "_CHECKSUMS")
    with open(target, "rb") as f:
        table = json.loads(f.read().split(b"\n", 1)[1])
    change(table)
    body = json.dumps(table, separators=(",", ":")).encode()
    head = b"jscope-checksums xxh3_64=" + xxhash.xxh3_64_hexdigest(body).encode()
    with open(target, "wb") as f:
        f.write(head + b"\n" + body)


def wrong_checksum(path: str) -> None:
    def change(table):
        table["variables"]["params/w1"]["murmur3_sum64"] = "0123456789abcdef"

    rewrite_table(path, change)


def flipped_bit(path: str) -> None:
    """Flips a bit of the data file, and records the file's new checksum (as if
    it were too large to have one): only the arrays' reads can tell. (Orbax
    merges each process's writes into the top-level ``d/`` at commit.)"""
    import xxhash  # noqa: PLC0415

    rel = "d"
    names = os.listdir(os.path.join(path, rel))  # the largest holds the arrays
    name = max(names, key=lambda n: os.path.getsize(os.path.join(path, rel, n)))
    with open(os.path.join(path, rel, name), "r+b") as f:
        blob = bytearray(f.read())
        blob[len(blob) // 2] ^= 0x10
        f.seek(0)
        f.write(bytes(blob))

    def change(table):
        table["files"][os.path.join(rel, name)]["xxh3_64"] = xxhash.xxh3_64_hexdigest(
            bytes(blob)
        )

    rewrite_table(path, change)


def single_restore(work: str) -> None:
    jax = setup(8)
    import jscope as js  # noqa: PLC0415

    _, tree, _ = train(jax)
    saved = js.latest_checkpoint(os.path.join(work, "multi"))
    mesh_4x2 = make_mesh(jax, (4, 2))
    restored = js.Saver().restore(saved, targets(jax, tree, mesh_4x2))
    compare(jax, restored, os.path.join(work, "multi.npz"))
    w1 = restored["params"]["w1"]
    assert w1.sharding.mesh.shape == mesh_4x2.shape and len(w1.sharding.device_set) == 8
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    on_one = jax.tree.map(
        lambda t: t.update(sharding=one) if isinstance(t, jax.ShapeDtypeStruct) else t,
        targets(jax, tree, mesh_4x2),
    )
    alone = js.Saver().restore(saved, on_one)
    assert alone["params"]["w1"].sharding == one
    compare(jax, alone, os.path.join(work, "multi.npz"))
    assert js.verify_checkpoint(saved)
    print("OK single-restore", flush=True)


def stall(work: str, port: int, process_id: int) -> None:
    """Process 0 never saves; process 1 saves and must give up after the timeout.

    ``JSCOPE_BARRIER_TIMEOUT_S`` is set by the parent. Process 1 prints the
    error it got and how long it waited; process 0 waits to be killed.
    """
    import time  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    setup(4, port, process_id)
    import jscope as js  # noqa: PLC0415

    if process_id == 0:
        print("OK stall 0 waiting", flush=True)
        time.sleep(600)
        return
    tree = {"params": {"w": np.arange(8, dtype=np.float32)}}
    report_error(lambda: js.Saver().save(tree, os.path.join(work, "stalled", "model")))


def report_error(act) -> None:
    """Runs ``act()`` and prints what it raised and after how long, for the parent.

    Leaves by ``os._exit`` (0 when it raised, 1 when not): jax.distributed's
    exit handlers would wait for the process that never came.
    """
    import time  # noqa: PLC0415

    start = time.monotonic()
    try:
        act()
    except Exception as e:  # reported to the parent
        waited = time.monotonic() - start
        print(f"RAISED {type(e).__module__}.{type(e).__name__} after {waited:.1f} s")
        print(f"MESSAGE {e}", flush=True)
        os._exit(0)
    print("DONE without process 0", flush=True)
    os._exit(1)


def stall_restore(work: str, port: int, process_id: int) -> None:
    """Both save a checkpoint sharded across them; then process 0 stops, and
    process 1's restore must give up after ``JSCOPE_BARRIER_TIMEOUT_S`` (set
    here, after the save, so that the save waits as long as it needs).
    """
    import time  # noqa: PLC0415

    jax = setup(4, port, process_id)
    import jscope as js  # noqa: PLC0415

    mesh = make_mesh(jax, (2, 4))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    full = np.arange(64, dtype=np.float32).reshape(8, 8)
    w = jax.make_array_from_callback(full.shape, rows, lambda index: full[index])
    path = os.path.join(work, "stalled-restore", "model")
    js.Saver().save({"params": {"w": w}}, path)
    if process_id == 0:
        print("OK stall-restore 0 waiting", flush=True)
        time.sleep(600)
        return
    os.environ["JSCOPE_BARRIER_TIMEOUT_S"] = "3"
    target = {"params": {"w": jax.ShapeDtypeStruct(w.shape, w.dtype, sharding=rows)}}
    report_error(lambda: js.Saver().restore(path, target))


def main(argv: list[str]) -> None:
    role, work = argv[0], argv[1]
    if role == "single-save":
        single_save(work)
    elif role == "multi":
        multi(work, int(argv[2]), int(argv[3]))
    elif role == "single-restore":
        single_restore(work)
    elif role == "stall":
        stall(work, int(argv[2]), int(argv[3]))
    elif role == "stall-restore":
        stall_restore(work, int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
