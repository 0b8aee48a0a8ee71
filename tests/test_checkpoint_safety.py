"""Checkpoints under faults: failed and killed overwrites, corruption, colliding
keys, chdir, two writers, threads, restarts, Ctrl-C, full and read-only disks,
unsupported dtypes and odd state files. Each test is the failing program first.
"""

import contextlib
import errno
import json
import os
import pathlib
import pickle
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscope as js
from jscope import errors

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def tree_at(step, n=256):
    base = jnp.arange(n, dtype=jnp.float32)
    return {
        "params": {f"w{i}": base * (i + 1) + step for i in range(3)},
        "state": {"step": jnp.array(step, jnp.int32)},
    }


def assert_tree_equal(a, b):
    fa, fb = js.flatten(a), js.flatten(b)
    assert sorted(fa) == sorted(fb)
    for path in fa:
        x, y = np.asarray(fa[path]), np.asarray(fb[path])
        assert x.dtype == y.dtype and np.array_equal(x, y), path


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def listdir(directory):
    return sorted(n for n in os.listdir(directory) if n != ".checkpoint.lock")


def restores_to_its_step(path, n=256):
    """The checkpoint restores bit-exactly to ``tree_at`` of the step it holds."""
    step = int(js.load_variable(path, "state/step"))
    expected = tree_at(step, n)
    assert_tree_equal(js.Saver().restore(path, zeros_like(expected)), expected)
    assert js.verify_checkpoint(path) == sorted(js.flatten(expected))
    return step


# ------------------------------------------- 1. failed or killed overwrites


@pytest.mark.parametrize("step", [None, 4])
def test_a_failed_overwrite_keeps_the_old_checkpoint(tmp_path, step):
    saver = js.Saver()
    path = saver.save(tree_at(1), tmp_path / "model", global_step=step)
    bad = tree_at(2)
    bad["params"]["w1"].delete()  # a donated array: the save raises
    with pytest.raises(RuntimeError, match="deleted"):
        saver.save(bad, tmp_path / "model", global_step=step)
    assert js.latest_checkpoint(tmp_path) == path
    assert restores_to_its_step(path) == 1
    assert listdir(tmp_path) == ["checkpoint", os.path.basename(path)]
    saver.save(tree_at(3), tmp_path / "model", global_step=step)  # no manual fix
    assert restores_to_its_step(path) == 3


OVERWRITER = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    import jscope as js

    directory, start, blocking = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    base = jnp.arange(1 << 18, dtype=jnp.float32)
    saver = js.Saver(max_to_keep=2)
    step = start
    while True:
        tree = {"params": {f"w{i}": base * (i + 1) + step for i in range(3)},
                "state": {"step": jnp.array(step, jnp.int32)}}
        saver.save(tree, directory + "/model", blocking=blocking)  # same path
        print(f"saved {step}", flush=True)
        step += 1
    """
)


def _wait_for_first_save(child, directory):
    """Waits until ``child`` reports a save and its checkpoint is recorded."""
    assert child.stdout.readline().startswith("saved")
    deadline = time.monotonic() + 60
    while js.latest_checkpoint(directory) is None:
        assert child.poll() is None, f"the child exited with {child.returncode}"
        assert time.monotonic() < deadline, "no checkpoint recorded after 60 s"
        time.sleep(0.01)


@pytest.mark.parametrize("blocking", [True, False])
def test_killed_overwrites_leave_a_checkpoint_that_restores(tmp_path, blocking):
    rng = random.Random(int(blocking))
    step = 0
    for _ in range(3):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                OVERWRITER,
                str(tmp_path),
                str(step),
                "01"[blocking],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=ENV,
        )
        try:
            _wait_for_first_save(child, tmp_path)
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        latest = js.latest_checkpoint(tmp_path)
        assert latest == str(tmp_path / "model")
        got = restores_to_its_step(latest, 1 << 18)
        # "saved s" means committed when blocking, started (s - 1 committed) if not
        assert got >= step - (not blocking)
        step = got + 1


def restore_with_n(path, n):
    expected = tree_at(0, n)
    return js.Saver().restore(path, zeros_like(expected))


# ------------------------------------------------------------ 2. corruption


def _files(path):
    out = []
    for parent, _, names in os.walk(path):
        out += [os.path.relpath(os.path.join(parent, n), path) for n in names]
    return sorted(out)


def _flip(bit):
    def mutate(path):
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            if data:
                i = bit % (8 * len(data))
                data[i // 8] ^= 1 << (i % 8)
                f.seek(0)
                f.write(bytes(data))

    return mutate


MUTATIONS = {
    "deleted": os.remove,
    "emptied": lambda p: open(p, "wb").close(),
    "truncated": lambda p: os.truncate(p, os.path.getsize(p) // 2),
    "flipped": _flip(12345),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pristine")
    return js.Saver().save(tree_at(5, n=4096), directory / "model")


@pytest.mark.parametrize("how", sorted(MUTATIONS))
def test_every_damaged_file_is_a_corrupt_error(tmp_path, pristine, how):
    for rel in _files(pristine):
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        MUTATIONS[how](os.path.join(work, rel))
        for read in (
            lambda w=work: restore_with_n(w, 4096),
            lambda w=work: js.load_variable(w, "params/w1"),
            lambda w=work: js.verify_checkpoint(w),
        ):
            with pytest.raises(js.CheckpointCorruptError) as info:
                read()
            error = info.value
            assert error.key is not None or error.file is not None, rel
            assert str(work) in str(error)


def test_a_sweep_of_single_bit_flips_never_restores_wrong_values(tmp_path, pristine):
    rng = random.Random(0)
    data_files = [r for r in _files(pristine) if "/d/" in f"/{r}"]
    for trial in range(24):
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        rel = data_files[trial % len(data_files)]
        _flip(rng.randrange(1 << 30))(os.path.join(work, rel))
        with pytest.raises(js.CheckpointCorruptError):
            restore_with_n(work, 4096)


def test_corrupt_error_names_the_variable_and_pickles(tmp_path):
    # A checksum mismatch of the values alone: rewrite one array's recorded sum.
    path = js.Saver().save(tree_at(1), tmp_path / "model")
    target = pathlib.Path(path, "_CHECKSUMS")
    head, body = target.read_bytes().split(b"\n", 1)
    table = json.loads(body)
    table["variables"]["params/w2"]["xxh3_64"] = "0" * 16
    import xxhash

    body = json.dumps(table, separators=(",", ":")).encode()
    head = b"jscope-checksums xxh3_64=" + xxhash.xxh3_64_hexdigest(body).encode()
    target.write_bytes(head + b"\n" + body)
    with pytest.raises(js.CheckpointCorruptError, match="variable params/w2") as info:
        js.Saver().restore(path, zeros_like(tree_at(0)))
    assert info.value.key == "params/w2" and info.value.file == path
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is js.CheckpointCorruptError and str(again) == str(info.value)
    assert (again.key, again.file) == ("params/w2", path)
    # The other variables still restore one by one.
    assert int(js.load_variable(path, "state/step")) == 1


# ------------------------------------------------------------ 3. keys collide


def test_var_list_keys_that_canonicalise_equal_are_refused():
    with pytest.raises(ValueError, match="'a/b' and 'a/b/' are the same checkpoint"):
        js.Saver({"a/b": "params/x", "a/b/": "params/y"})
    with pytest.raises(ValueError, match="same name: params/x"):
        js.Saver(["params/x", "params//x/"])


def test_tree_keys_that_collide_are_refused(tmp_path):
    tree = {"a/b": jnp.ones(2), "a": {"b": jnp.zeros(2)}}
    with pytest.raises(js.CheckpointError, match="same checkpoint key 'a/b'"):
        js.Saver().save(tree, tmp_path / "model")
    assert listdir(tmp_path) == []


# ---------------------------------------------------------------- 4. chdir


def test_rotation_after_chdir_deletes_only_recorded_checkpoints(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    saver = js.Saver(max_to_keep=1)
    saver.save(tree_at(0), "ckpt/model", global_step=0)
    other = js.Saver().save(tree_at(9), tmp_path / "b" / "ckpt" / "model", 0)
    monkeypatch.chdir(tmp_path / "b")  # model-0 also exists here: not ours
    saver.save(tree_at(1), tmp_path / "a" / "ckpt" / "model", global_step=1)
    assert restores_to_its_step(other) == 9
    assert listdir(tmp_path / "a" / "ckpt") == ["checkpoint", "model-1"]


# ------------------------------------------------------- 5. two processes

HOLDER = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp
    import jscope as js

    saver = js.Saver()
    saver.save({"params": {"w": jnp.ones(3)}}, sys.argv[1] + "/model", 1)
    print("holding", flush=True)
    time.sleep(120)
    """
)


def test_a_second_writer_process_gets_a_lock_error_naming_the_holder(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    try:
        assert child.stdout.readline() == "holding\n"
        with pytest.raises(js.CheckpointLockError) as info:
            js.Saver().save(tree_at(2), tmp_path / "model", 2)
        assert f"process {child.pid} on host" in str(info.value)
        assert info.value.holder["pid"] == child.pid
        assert isinstance(info.value, js.CheckpointError)
        assert pickle.loads(pickle.dumps(info.value)).holder == info.value.holder
        start = time.monotonic()
        with pytest.raises(js.CheckpointLockError, match=r"waited 0\.3 s"):
            js.Saver(lock_timeout=0.3).save(tree_at(2), tmp_path / "model", 2)
        assert time.monotonic() - start >= 0.3
        assert listdir(tmp_path) == ["checkpoint", "model-1"]  # nothing written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    # The kernel released the dead holder's lock: the restart saves.
    saver = js.Saver(lock_timeout=None)
    path = saver.save(tree_at(2), tmp_path / "model", 2)
    assert restores_to_its_step(path) == 2
    assert saver.last_checkpoints == [str(tmp_path / "model-1"), path]  # adopted


# ---------------------------------------------------------------- 6. threads


@pytest.mark.parametrize("shared", [True, False])
def test_savers_in_several_threads(tmp_path, shared):
    failures = []

    def work(i):
        try:
            saver = js.Saver(max_to_keep=2)
            directory = tmp_path if shared else tmp_path / f"t{i}"
            for step in range(4):
                tree = tree_at(100 * i + step)
                saver.save(tree, directory / f"m{i}", step, blocking=step % 2 == 0)
            saver.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            failures.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert failures == []
    for i in range(3):
        directory = tmp_path if shared else tmp_path / f"t{i}"
        assert restores_to_its_step(directory / f"m{i}-3") == 100 * i + 3


def test_a_saver_deletes_only_its_own_checkpoints_in_a_shared_directory(tmp_path):
    """Three savers take turns in one directory, each rotating its own save
    path ("m0", "m1", "m2") with max_to_keep=2. A saver adopts the checkpoints
    of the directory's state on its first save there (TF1's
    recover_last_checkpoints), but only those of its own save path: the
    others' are not its to delete, whatever order the savers run in (the
    threaded test above hits this order when one thread runs ahead)."""
    for i in range(3):
        saver = js.Saver(max_to_keep=2)
        for step in range(4):
            saver.save(tree_at(100 * i + step), tmp_path / f"m{i}", step)
        saver.close()
        assert saver.last_checkpoints == [
            str(tmp_path / f"m{i}-2"),
            str(tmp_path / f"m{i}-3"),
        ]
    assert listdir(tmp_path) == ["checkpoint"] + [
        f"m{i}-{step}" for i in range(3) for step in (2, 3)
    ]
    for i in range(3):
        for step in (2, 3):
            assert restores_to_its_step(tmp_path / f"m{i}-{step}") == 100 * i + step
    # A later run of one of them adopts its own and rotates them as before.
    again = js.Saver(max_to_keep=2)
    again.save(tree_at(200 + 4), tmp_path / "m2", 4)
    assert again.last_checkpoints == [str(tmp_path / "m2-3"), str(tmp_path / "m2-4")]
    assert not (tmp_path / "m2-2").exists()
    assert (tmp_path / "m0-2").exists() and (tmp_path / "m1-2").exists()


# --------------------------------------------------- 7. state in a checkpoint


def test_saving_inside_a_checkpoint_directory_is_refused(tmp_path):
    path = js.Saver().save(tree_at(1), tmp_path / "model")
    with pytest.raises(js.CheckpointError, match="inside the checkpoint"):
        js.Saver().save(tree_at(2), os.path.join(path, "inner"))
    with pytest.raises(js.CheckpointError, match="inside the checkpoint"):
        js.Saver().save(tree_at(2), os.path.join(path, "sub", "inner"))
    assert restores_to_its_step(path) == 1


# ------------------------------------------------------ 8. restarts, Ctrl-C


def test_max_to_keep_holds_across_restarts(tmp_path):
    for run in range(3):
        with js.Saver(max_to_keep=2) as saver:
            for i in range(3):
                saver.save(tree_at(3 * run + i), tmp_path / "model", 3 * run + i)
    assert listdir(tmp_path) == ["checkpoint", "model-7", "model-8"]
    state = json.loads((tmp_path / "checkpoint").read_text())
    assert state["all_model_checkpoint_paths"] == ["model-7", "model-8"]


def test_stale_temporary_directories_are_removed_by_the_next_save(tmp_path):
    js.Saver().save(tree_at(1), tmp_path / "model", 1)
    stale = [
        ".model-2.jscope-tmp-99999-0a0b0c0d",
        ".model-2.jscope-tmp-99999-0a0b0c0d.orbax-checkpoint-tmp",
        ".model-1.jscope-old-99999-01020304",
        "model-0.orbax-checkpoint-tmp",
    ]
    for name in stale:
        (tmp_path / name / "ocdbt.process_0").mkdir(parents=True)
    (tmp_path / ".checkpoint.abc123").write_text("{")
    js.Saver().save(tree_at(2), tmp_path / "model", 2)
    assert listdir(tmp_path) == ["checkpoint", "model-1", "model-2"]


# The child takes Python's own Ctrl-C handler even when started with SIGINT
# ignored (as a shell's background job is), which would leave it running.
INTERRUPTED = textwrap.dedent(
    """
    import signal
    import sys
    import jax.numpy as jnp
    import jscope as js

    signal.signal(signal.SIGINT, signal.default_int_handler)

    base = jnp.arange(1 << 20, dtype=jnp.float32)
    saver = js.Saver(max_to_keep=2)
    step = 0
    while True:
        tree = {"params": {f"w{i}": base * (i + 1) + step for i in range(3)},
                "state": {"step": jnp.array(step, jnp.int32)}}
        saver.save(tree, sys.argv[1] + "/model", step, blocking=sys.argv[2] == "1")
        print(f"saved {step}", flush=True)
        step += 1
    """
)


@pytest.mark.parametrize("blocking", [True, False])
def test_ctrl_c_during_a_save_ends_in_one_line(tmp_path, blocking):
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path), "01"[blocking]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        _wait_for_first_save(child, tmp_path)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    assert child.returncode == -signal.SIGINT
    lines = err.strip().splitlines()
    # Caught in a save: jscope's one line, then Python's KeyboardInterrupt; caught
    # between two saves (printing, adding arrays): Python's KeyboardInterrupt.
    assert lines[-1] == "KeyboardInterrupt", err
    if "jscope: interrupted" in err:
        assert lines[0].startswith("jscope: interrupted; finishing the checkpoint")
        assert len(lines) <= 10, err
    assert "Exception in thread" not in err and "orbax" not in err, err
    latest = js.latest_checkpoint(tmp_path)
    step = int(js.load_variable(latest, "state/step"))
    expected = {
        "params": {
            f"w{i}": np.arange(1 << 20, dtype=np.float32) * (i + 1) + step
            for i in range(3)
        },
        "state": {"step": np.array(step, np.int32)},
    }
    assert_tree_equal(js.Saver().restore(latest, zeros_like(expected)), expected)
    assert not [n for n in listdir(tmp_path) if "tmp" in n]


# ------------------------------------------- 9. disks, dtypes, state files

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs needs root"
)


@contextlib.contextmanager
def tmpfs(path, size="1m"):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path])


@needs_root
# Orbax leaves an asyncio loop of its failed background write to the collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("blocking", [True, False])
def test_a_full_disk_is_a_write_error_and_keeps_the_last_checkpoint(tmp_path, blocking):
    with tmpfs(tmp_path / "disk") as disk:
        saver = js.Saver()
        path = saver.save(tree_at(1), disk / "model")
        big = tree_at(2, n=1 << 18)  # 3 MiB: does not fit
        with pytest.raises(OSError) as info:
            saver.save(big, disk / "model", blocking=blocking)
            saver.wait_until_finished()
        error = info.value
        assert isinstance(error, js.CheckpointWriteError)
        assert isinstance(error, js.CheckpointError)
        assert error.errno == errno.ENOSPC and "disk is full" in str(error)
        assert str(disk / "model") in str(error)
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.errno, str(again)) == (
            type(error),
            error.errno,
            str(error),
        )
        assert js.latest_checkpoint(disk) == path
        assert restores_to_its_step(path) == 1
        assert listdir(disk) == ["checkpoint", "model"]


@needs_root
def test_a_read_only_disk_is_a_write_error(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        path = js.Saver().save(tree_at(1), disk / "model")
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        with pytest.raises(js.CheckpointWriteError) as info:
            js.Saver().save(tree_at(2), disk / "model")
        assert info.value.errno == errno.EROFS and "read-only" in str(info.value)
        assert restores_to_its_step(path) == 1


def test_an_unsupported_dtype_is_refused_at_save(tmp_path):
    tree = {"params": {"w": jnp.ones(4, jnp.uint4), "v": jnp.ones(2)}}
    with pytest.raises(TypeError, match=r"params/w \(uint4\).*Supported dtypes: bool"):
        js.Saver().save(tree, tmp_path / "model")
    assert listdir(tmp_path) == []


def test_the_state_file_is_readable_by_others(tmp_path):
    js.Saver().save(tree_at(1), tmp_path / "model")
    mode = stat.S_IMODE(os.stat(tmp_path / "checkpoint").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize(
    "content",
    [
        b"3",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model_checkpoint_path": 3}',
        b'{"model_checkpoint_path": "m", "all_model_checkpoint_paths": "m"}',
        b'{"all_model_checkpoint_paths": ["m"], '
        b'"all_model_checkpoint_timestamps": ["x"]}',
    ],
)
def test_odd_state_files_are_checkpoint_errors(tmp_path, content):
    (tmp_path / "checkpoint").write_bytes(content)
    with pytest.raises(js.CheckpointError, match="checkpoint state file"):
        js.latest_checkpoint(tmp_path)
    with pytest.raises(js.CheckpointError, match="checkpoint state file"):
        js.Saver().save(tree_at(1), tmp_path / "model")


# ---------------------------------------------------------------- classes


@pytest.mark.parametrize(
    "cls, builtins",
    [
        (js.CheckpointCorruptError, (ValueError,)),
        (js.CheckpointWriteError, (ValueError, OSError)),
        (js.CheckpointLockError, (ValueError,)),
        (js.CheckpointTypeError, (ValueError, TypeError)),
    ],
)
def test_new_error_classes(cls, builtins):
    assert issubclass(cls, js.CheckpointError) and issubclass(cls, builtins)
    assert getattr(errors, cls.__name__) is cls
    e = cls("checkpoint ckpt/model cannot be used")
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is cls and str(again) == str(e)
