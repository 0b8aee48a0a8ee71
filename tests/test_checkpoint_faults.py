"""Checkpoints under faults: kills, full and read-only disks, corrupt files, races.

The promise checked everywhere: whatever happens, the last good checkpoint is
still there and restores bit-exactly what was saved, or a `jscope.errors` class
says clearly that it cannot. No test accepts a wrong value.

Child processes run ``tests/checkpoint_fault_tools.py``; each has a timeout and is
killed in a ``finally``. The module takes about a minute on two cores.
"""

import errno
import gc
import json
import os
import pickle
import random
import re
import shutil
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checkpoint_fault_tools import (
    Child,
    corrupt,
    files_of,
    mount_tmpfs,
    numbers,
    remount_read_only,
    tree_at,
    tree_diff,
    unmount,
    without_dac_override,
    zeros_like,
)

import jscope as js
from jscope import errors

# Checkpoint names the tests' savers use: anything else that is a directory
# beside them is a temporary directory.
CHECKPOINT_NAME = re.compile(r"model(-\d+)?")


def checkpoint_dirs(directory):
    return sorted(
        n
        for n in os.listdir(directory)
        if CHECKPOINT_NAME.fullmatch(n) and os.path.isdir(os.path.join(directory, n))
    )


def other_dirs(directory):
    """Directories beside the checkpoints: unfinished or stale temporary ones."""
    return sorted(
        n
        for n in os.listdir(directory)
        if not CHECKPOINT_NAME.fullmatch(n)
        and os.path.isdir(os.path.join(directory, n))
    )


def state_paths(directory):
    with open(os.path.join(directory, "checkpoint"), encoding="utf-8") as f:
        return json.load(f)["all_model_checkpoint_paths"]


def restore_exact(path, want):
    """Restores ``path`` into zeros shaped like ``want``; asserts every bit."""
    restored = js.Saver().restore(path, zeros_like(want))
    diff = tree_diff(restored, want)
    assert not diff, f"{path} restored wrong values: {diff}"


def restored_step(path, size=None):
    """The (step, writer) a checkpoint of `tree_at` holds, read from it."""
    target = zeros_like(tree_at(0) if size is None else tree_at(0, size=size))
    restored = js.Saver().restore(path, target)
    return int(restored["state"]["step"]), int(restored["state"]["writer"]), restored


def check_pickles(e, *attributes):
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is type(e) and str(again) == str(e)
    for name in attributes:
        assert getattr(again, name) == getattr(e, name), name


# ------------------------------------------------------------ kill -9 at random

# mode: how the child saves; name: the checkpoint it leaves; slack: how many
# saves past the last one it reported complete may have completed unreported.
KILL_MODES = {
    "sync": (lambda s: f"model-{s}", 1),
    "async": (lambda s: f"model-{s}", 2),
    "overwrite": (lambda s: "model", 1),
    "overwrite_step": (lambda s: "model-7", 2),
}


@pytest.mark.parametrize("mode", sorted(KILL_MODES))
def test_sigkill_at_random_points_keeps_the_last_good_checkpoint(tmp_path, mode):
    """A saving process is SIGKILLed at random moments, then started again.

    After every kill, `latest_checkpoint` names a checkpoint that restores
    bit-exactly to one the child saved, no older than the last save the child
    reported complete; temporary directories of the dead child are gone after
    the next child's first save.
    """
    name_of, slack = KILL_MODES[mode]
    rng = random.Random(f"kill-{mode}")
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    start, stale = 0, []
    for trial in range(2):
        with Child(
            ["saveloop", directory, mode, start, 0, 2], str(tmp_path / "err")
        ) as child:
            first = child.readline()
            assert first is not None and first.startswith("done"), child.stderr()
            gone = [n for n in stale if os.path.exists(os.path.join(directory, n))]
            assert not gone, f"stale temporary directories left: {gone}"
            time.sleep(rng.uniform(0.0, 0.4))
            child.kill()
            done = max(numbers(child.lines, "done"))
        latest = js.latest_checkpoint(directory)
        assert latest is not None, f"trial {trial}: no checkpoint after the kill"
        step, writer, restored = restored_step(latest)
        assert latest == os.path.join(directory, name_of(step)), latest
        assert done <= step <= done + slack, (trial, done, step)
        assert writer == 0
        diff = tree_diff(restored, tree_at(step))
        assert not diff, (trial, latest, diff)
        want = sorted(js.flatten(tree_at(0)))
        assert js.verify_checkpoint(latest) == want
        for entry in state_paths(directory):  # every listed checkpoint restores
            path = os.path.join(directory, entry)
            listed_step = restored_step(path)[0]
            restore_exact(path, tree_at(listed_step))
        stale = other_dirs(directory)
        start = step + 1


@pytest.mark.parametrize("where", ["write", "install"])
def test_stale_temporary_directories_are_removed_by_the_next_save(tmp_path, where):
    """A writer killed in the middle of a save leaves a temporary directory.

    The child holds its save at a fixed point (while Orbax writes, or just
    before the move into place) so that the kill always lands inside it.
    """
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    with Child(["big_save", directory, where], str(tmp_path / "err")) as child:
        line = child.readline()
        assert line == "holding", child.stderr()
        child.kill()
    stale = other_dirs(directory)
    assert stale, f"no temporary directory left by a save killed at {where}"
    assert checkpoint_dirs(directory) == [], os.listdir(directory)
    assert js.latest_checkpoint(directory) is None
    path = js.Saver().save(tree_at(3, size=64), os.path.join(directory, "model"), 3)
    assert other_dirs(directory) == [], os.listdir(directory)
    restore_exact(path, tree_at(3, size=64))


def test_a_save_that_raises_keeps_the_checkpoint_it_would_replace(tmp_path):
    """Overwriting with a deleted (donated) array fails; the old one stays."""
    old = {"params": {"w": jnp.arange(8.0)}, "state": {"step": jnp.array(1)}}
    path = js.Saver().save(old, str(tmp_path / "model"))
    new = {"params": {"w": jnp.ones(8)}, "state": {"step": jnp.array(2)}}
    new["params"]["w"].delete()
    with pytest.raises((RuntimeError, errors.JscopeError)):
        js.Saver().save(new, str(tmp_path / "model"))
    assert js.latest_checkpoint(tmp_path) == path
    restore_exact(path, jax.tree.map(np.asarray, old))
    assert other_dirs(tmp_path) == [], f"the failed save left {os.listdir(tmp_path)}"


# ------------------------------------------------------------------- restarts


def test_max_to_keep_holds_across_three_runs(tmp_path):
    """Three runs of three saves with max_to_keep=2 leave the last two (TF1)."""
    directory = str(tmp_path / "ckpt")
    with Child(["run", directory, 0, 3, 2], str(tmp_path / "err")) as child:
        assert child.wait() == 0, child.stderr()
        assert child.lines == ["ok"], child.stderr()
    assert checkpoint_dirs(directory) == ["model-1", "model-2"]
    assert state_paths(directory) == ["model-1", "model-2"]
    for run in (1, 2):  # the second and third runs: new Savers in this process
        saver = js.Saver(max_to_keep=2)
        for step in range(3 * run, 3 * run + 3):
            saver.save(tree_at(step, size=64), os.path.join(directory, "model"), step)
        last = [f"model-{3 * run + 1}", f"model-{3 * run + 2}"]
        assert checkpoint_dirs(directory) == last
        assert state_paths(directory) == last
    assert state_paths(directory) == ["model-7", "model-8"]
    assert other_dirs(directory) == []
    assert saver.last_checkpoints == [
        os.path.join(directory, "model-7"),
        os.path.join(directory, "model-8"),
    ]
    for step in (7, 8):
        restore_exact(os.path.join(directory, f"model-{step}"), tree_at(step, size=64))


# ----------------------------------------------------------------- full disk


@pytest.fixture
def tmpfs(tmp_path, request):
    """A 2 MiB tmpfs, unmounted at the end; skips (with the reason) without one."""
    mount = str(tmp_path / "mnt")
    reason = mount_tmpfs(mount, "2m")
    if reason is not None:
        pytest.skip(reason)
    request.addfinalizer(lambda: unmount(mount))
    return mount


def big_tree(step):
    """About 4 MiB: does not fit the 2 MiB tmpfs."""
    return tree_at(step, size=1 << 18)


@pytest.mark.parametrize("leaves", ["numpy", "jax"])
@pytest.mark.parametrize("how", ["new_step", "overwrite", "non_blocking"])
def test_disk_full_is_a_write_error_and_keeps_the_last_checkpoint(tmpfs, how, leaves):
    """A stray exception after the save (in any thread) fails this test too."""
    directory = os.path.join(tmpfs, "ckpt")
    small = tree_at(1, size=64)
    big = big_tree(2)
    if leaves == "jax":
        big = jax.tree.map(jnp.asarray, big)
    saver = js.Saver()
    if how == "overwrite":
        first = saver.save(small, os.path.join(directory, "model"))
    else:
        first = saver.save(small, os.path.join(directory, "model"), 1)
    with pytest.raises(errors.CheckpointWriteError) as info:
        if how == "new_step":
            saver.save(big, os.path.join(directory, "model"), 2)
        elif how == "overwrite":
            saver.save(big, os.path.join(directory, "model"))
        else:
            saver.save(big, os.path.join(directory, "model"), 2, blocking=False)
            saver.wait_until_finished()
    e = info.value
    assert isinstance(e, errors.CheckpointError) and isinstance(e, OSError)
    assert e.errno == errno.ENOSPC, (e.errno, str(e))
    assert directory in str(e), str(e)
    check_pickles(e, "errno")
    assert js.latest_checkpoint(directory) == first
    restore_exact(first, small)
    assert js.verify_checkpoint(first) == sorted(js.flatten(small))


def test_after_a_disk_full_error_the_next_save_fits(tmpfs):
    """The failed save's partial files are removed: the space is free again."""
    directory = os.path.join(tmpfs, "ckpt")
    saver = js.Saver()
    saver.save(tree_at(1, size=64), os.path.join(directory, "model"), 1)
    with pytest.raises(errors.CheckpointWriteError):
        saver.save(big_tree(2), os.path.join(directory, "model"), 2)
    assert other_dirs(directory) == [], os.listdir(directory)
    # Half of the 2 MiB: fits only if the failed save left nothing behind.
    fits = tree_at(3, size=1 << 16)
    path = saver.save(fits, os.path.join(directory, "model"), 3)
    restore_exact(path, fits)


# ----------------------------------------------------------- read-only disks


@pytest.mark.parametrize("leaves", ["numpy", "jax"])
def test_a_failed_save_leaves_no_stray_exceptions(tmpfs, leaves):
    """The save raises one error; nothing else is raised later, in any thread.

    Orbax gathers the arrays' writes in an event loop that it closes at the
    first failure; a write still in flight then calls into the closed loop
    (``RuntimeError: Event loop is closed``, through `sys.unraisablehook`),
    long after the save raised. NumPy and jax.Array leaves take different
    paths through Orbax: both are checked.
    """
    directory = os.path.join(tmpfs, "ckpt")
    saver = js.Saver()
    small = tree_at(1, size=64)
    first = saver.save(small, os.path.join(directory, "model"), 1)
    rng = np.random.default_rng(0)  # random: 4 MiB that do not compress
    many = {f"w{i}": rng.standard_normal(1 << 14, np.float32) for i in range(64)}
    if leaves == "jax":
        many = {k: jnp.asarray(v) for k, v in many.items()}
    stray = []
    hooks = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda u: stray.append(f"{u.exc_type.__name__}: {u.exc_value}")
    threading.excepthook = lambda a: stray.append(
        f"{a.exc_type.__name__}: {a.exc_value}"
    )
    try:
        with pytest.raises(errors.CheckpointWriteError):  # 64 arrays in flight
            saver.save(many, os.path.join(directory, "model"), 2)
        time.sleep(0.5)  # let any write still in flight end
        gc.collect()
    finally:
        sys.unraisablehook, threading.excepthook = hooks
    assert stray == [], f"{len(stray)} stray exceptions, e.g. {stray[:2]}"
    assert js.latest_checkpoint(directory) == first
    assert other_dirs(directory) == [], os.listdir(directory)
    restore_exact(first, small)


@pytest.mark.parametrize("leaves", ["numpy", "jax"])
def test_a_failed_read_leaves_no_stray_exceptions(tmp_path, leaves):
    """A read that fails in Orbax raises one error, and nothing later.

    Orbax gathers the arrays' reads in an event loop that it closes at the
    first failure, as for writes. The data file cut to half its size makes
    some reads fail while others are in flight. (A restore would refuse the
    cut file before reading it: Orbax's reader is called directly.)
    """
    from jscope._src.checkpoint import orbax_io

    rng = np.random.default_rng(0)
    many = {f"w{i}": rng.standard_normal(1 << 16, np.float32) for i in range(64)}
    path = js.Saver().save(many, str(tmp_path / "model"))
    data = max((os.path.join(path, f) for f in files_of(path)), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    specs = {
        key: orbax_io.restore_spec(v.shape, v.dtype, None, numpy=leaves == "numpy")
        for key, v in many.items()
    }
    stray = []
    hooks = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda u: stray.append(f"{u.exc_type.__name__}: {u.exc_value}")
    threading.excepthook = lambda a: stray.append(
        f"{a.exc_type.__name__}: {a.exc_value}"
    )
    try:
        for _ in range(3):
            with pytest.raises(Exception, match="OUT_OF_RANGE|reading"):
                orbax_io.restore(path, specs, partial=False, nested=False)
        time.sleep(0.5)  # let any read still in flight end
        gc.collect()
    finally:
        sys.unraisablehook, threading.excepthook = hooks
    assert stray == [], f"{len(stray)} stray exceptions, e.g. {stray[:2]}"
    with pytest.raises(errors.CheckpointCorruptError):
        js.Saver().restore(path, {k: np.zeros_like(v) for k, v in many.items()})


def test_read_only_directory_refuses_saves_and_still_restores(tmpfs):
    directory = os.path.join(tmpfs, "ckpt")
    small = tree_at(1, size=64)
    first = js.Saver().save(small, os.path.join(directory, "model"), 1)
    overwritable = js.Saver().save(small, os.path.join(directory, "model"))
    remount_read_only(tmpfs)
    for step in (2, None):  # a new checkpoint, and an overwrite
        with pytest.raises(errors.CheckpointWriteError) as info:
            js.Saver().save(tree_at(2, size=64), os.path.join(directory, "model"), step)
        e = info.value
        assert isinstance(e, OSError) and isinstance(e, errors.CheckpointError)
        assert e.errno == errno.EROFS, (e.errno, str(e))
        assert directory in str(e), str(e)
        check_pickles(e, "errno")
    # Readers need no write access.
    assert js.latest_checkpoint(directory) == overwritable
    for path in (first, overwritable):
        restore_exact(path, small)
        assert js.verify_checkpoint(path) == sorted(js.flatten(small))
    w = js.load_variable(first, "params/w0")
    assert np.array_equal(np.asarray(w), small["params"]["w0"])


def failed_save_in_a_child(tmp_path, directory, size_limit, deny=None):
    """Runs the `failed_save` child against a fresh checkpoint in ``directory``.

    ``deny``: a command prefix that runs the child without the right to write
    the directory, which is then made read-only (0555) for it. Returns the
    child's JSON report; ``directory`` is made writable again.
    """
    first = js.Saver().save(tree_at(0, size=64), os.path.join(directory, "model"), 0)
    if deny is not None:
        os.chmod(directory, 0o555)
    try:
        args = ["failed_save", directory, first, size_limit]
        with Child(args, str(tmp_path / "err"), prefix=deny or []) as child:
            line = child.readline()
            assert line is not None, child.stderr()
            out = json.loads(line)
            try:
                out["exit"] = child.wait(timeout=10)
            except AssertionError as e:  # checked last, by check_write_error
                out["exit"] = str(e)
    finally:
        os.chmod(directory, 0o755)
    assert out["restore"] == "exact", out
    assert out["latest"] == first, out
    assert js.latest_checkpoint(directory) == first
    restore_exact(first, tree_at(0, size=64))
    return out


def check_write_error(out, directory, code):
    assert out["save"] == "raised", out
    assert out["write_error"] and out["checkpoint_error"] and out["os_error"], out
    assert out["errno"] == code, out
    assert directory in out["message"], out
    assert out["pickled"] == [out["cls"], out["message"], out["errno"]], out
    assert out["exit"] == 0, f"the process did not end after the failed save: {out}"


def test_permission_denied_is_a_write_error(tmp_path):
    """A directory the process may not write (0555; root without DAC override)."""
    prefix = without_dac_override()
    if prefix is None:
        pytest.skip("running as root and setpriv is missing: root ignores modes")
    directory = str(tmp_path / "ckpt")
    out = failed_save_in_a_child(tmp_path, directory, 0, deny=prefix)
    check_write_error(out, directory, errno.EACCES)


def test_file_size_limit_is_a_write_error(tmp_path):
    """A write fault without a mount: RLIMIT_FSIZE of 256 KiB, a 2 MiB save."""
    directory = str(tmp_path / "ckpt")
    out = failed_save_in_a_child(tmp_path, directory, 1 << 18)
    check_write_error(out, directory, errno.EFBIG)


# ---------------------------------------------------------------- corruption


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small checkpoint of random values; copied before each corruption."""
    rng = np.random.default_rng(0)
    values = {
        "params": {
            "w": rng.standard_normal(8192).astype(np.float32),  # incompressible
            "b": np.arange(16, dtype=np.float32).astype(jnp.bfloat16),
        },
        "state": {"step": np.array(5, np.int32)},
    }
    directory = str(tmp_path_factory.mktemp("pristine"))
    path = js.Saver().save(values, os.path.join(directory, "model"), 5)
    return path, values


def outcomes(path, values):
    """What each reader makes of ``path``: ``{reader: outcome}``.

    An outcome is "corrupt" (CheckpointCorruptError), "exact" (the right
    values), "WRONG VALUES", or the class and message of another error.
    """
    flat = js.flatten(values)
    result = {}

    def attempt(reader, call, want):
        try:
            got = call()
        except errors.CheckpointCorruptError as e:
            assert isinstance(e, errors.CheckpointError) and isinstance(e, ValueError)
            assert e.key is None or e.key in flat, e.key
            assert isinstance(e.file, str) and os.path.basename(e.file) in str(e), (
                e.file,
                str(e),
            )
            check_pickles(e, "key", "file")
            result[reader] = "corrupt"
            return
        except Exception as e:  # reported, never accepted
            result[reader] = f"{type(e).__name__}: {str(e)[:200]}"
            return
        result[reader] = "WRONG VALUES" if tree_diff(got, want) else "exact"

    attempt("restore", lambda: js.Saver().restore(path, zeros_like(values)), values)
    for key, value in flat.items():
        attempt(f"load_variable {key}", lambda k=key: js.load_variable(path, k), value)
    attempt("verify", lambda: js.verify_checkpoint(path), sorted(flat))
    return result


def corrupted_copy(pristine_path, where, name):
    copy = os.path.join(where, name)
    shutil.copytree(pristine_path, copy)
    return copy


def test_verify_checkpoint_of_a_good_checkpoint(pristine, tmp_path):
    path, values = pristine
    assert js.verify_checkpoint(path) == sorted(js.flatten(values))
    result = outcomes(path, values)
    assert result == dict.fromkeys(result, "exact"), result
    with pytest.raises(errors.CheckpointNotFoundError):
        js.verify_checkpoint(str(tmp_path / "missing"))


@pytest.mark.parametrize("mode", ["truncate", "empty", "delete", "flip"])
def test_every_file_corrupted_is_a_corrupt_error(pristine, tmp_path, mode):
    """Each file of a checkpoint in turn: restore and verify raise, always.

    `load_variable` reads one key: it may return that key's exact value when
    the damage is elsewhere, but at least one key must raise, and none may
    return a wrong value or another error.
    """
    path, values = pristine
    failures = []
    names = files_of(path)
    assert len(names) >= 2, names
    for i, name in enumerate(names):
        if mode != "delete" and not os.path.getsize(os.path.join(path, name)):
            continue
        copy = corrupted_copy(path, str(tmp_path), f"c{i}")
        corrupt(os.path.join(copy, name), mode)
        result = outcomes(copy, values)
        loads = {r: o for r, o in result.items() if r.startswith("load_variable")}
        bad = {
            r: o
            for r, o in result.items()
            if o != "corrupt" and not (r in loads and o == "exact")
        }
        if "corrupt" not in loads.values():
            bad["load_variable (every key)"] = "no key raised"
        if bad:
            failures.append(f"{mode} {name}: {bad}")
    assert not failures, "\n".join(failures)


def locate(sizes, bit):
    """The file and bit within it of bit ``bit`` of the files laid end to end."""
    for name, size in sizes:
        if bit < size:
            return name, bit
        bit -= size
    raise IndexError(bit)


def test_single_bit_flips_in_the_array_data_are_detected(pristine, tmp_path):
    """A sweep of single bits over the array data (the files holding values)."""
    path, values = pristine
    data = [n for n in files_of(path) if os.path.getsize(os.path.join(path, n)) > 16384]
    assert data, f"no file holds the 32 KiB of random values: {files_of(path)}"
    bits = [(n, 8 * os.path.getsize(os.path.join(path, n))) for n in data]
    total = sum(b for _, b in bits)
    rng = random.Random(0)
    failures = []
    for trial, bit in enumerate(sorted(rng.sample(range(total), 40))):
        name, position = locate(bits, bit)
        copy = corrupted_copy(path, str(tmp_path), f"b{trial}")
        corrupt(os.path.join(copy, name), "flip", bit=position)
        result = outcomes(copy, values)
        for reader in ("restore", "load_variable params/w", "verify"):
            if result[reader] != "corrupt":
                failures.append(f"bit {position} of {name}, {reader}: {result[reader]}")
    assert not failures, f"{len(failures)} undetected:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    "content", [b"7", b"\xff\xfe\x00garbage", b"[" * 100000, b'{"model_checkpoint_p']
)
def test_odd_state_files_are_checkpoint_errors(tmp_path, content):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "checkpoint").write_bytes(content)
    with pytest.raises(errors.CheckpointError, match="checkpoint"):
        js.latest_checkpoint(directory)


def test_state_file_is_readable_by_others(tmp_path):
    js.Saver().save(tree_at(0, size=64), str(tmp_path / "model"), 0)
    mode = os.stat(tmp_path / "checkpoint").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)


# ------------------------------------------------------------ two processes


def test_readers_never_see_a_half_written_checkpoint(tmp_path):
    """A reader restores the latest checkpoint while a writer overwrites it.

    The checkpoint may be replaced between `latest_checkpoint` and `restore`
    (then it is gone: CheckpointNotFoundError), but what is read is always one
    whole save: never wrong values, never reported corrupt.
    """
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    seen, gone, failures = set(), 0, []
    args = ["saveloop", directory, "overwrite", 0, 0, 2]
    with Child(args, str(tmp_path / "err")) as writer:
        assert (writer.readline() or "").startswith("done"), writer.stderr()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            latest = js.latest_checkpoint(directory)
            try:
                step, _, restored = restored_step(latest)
            except errors.CheckpointNotFoundError:
                gone += 1
                continue
            except Exception as e:  # reported below
                failures.append(f"{type(e).__name__}: {str(e)[:300]}")
                continue
            seen.add(step)
            diff = tree_diff(restored, tree_at(step))
            if diff:
                failures.append(f"step {step}: {diff}")
        writer.kill()
    assert not failures, f"{len(failures)} bad reads ({gone} gone): {failures[:3]}"
    assert len(seen) >= 2, f"the reader saw only steps {seen}"


def test_a_file_gone_between_its_size_and_checksum_is_corrupt(tmp_path, monkeypatch):
    """The window the reader above can hit: a writer replacing the checkpoint
    deletes a file after the reader read its size and before it hashed it. The
    read must fail as a checkpoint error (then retried or reported), never
    with a bare FileNotFoundError."""
    from jscope._src.checkpoint import integrity

    path = js.Saver().save(tree_at(3, size=64), str(tmp_path / "model"), 3)
    table = integrity.read(path)
    assert table is not None
    hashed = [rel for rel, e in table["files"].items() if e.get("xxh3_64")]
    assert hashed, table["files"]
    victim = os.path.join(path, hashed[0])
    real_getsize = os.path.getsize

    def getsize_then_delete(p):
        size = real_getsize(p)
        if p == victim and os.path.exists(p):
            os.remove(p)
        return size

    monkeypatch.setattr(integrity.os.path, "getsize", getsize_then_delete)
    with pytest.raises(errors.CheckpointCorruptError, match="a file is missing") as e:
        restored_step(path, size=64)
    assert e.value.file == victim


def test_a_second_process_fails_fast_or_waits_and_never_mixes(tmp_path):
    """A zombie job keeps saving while its restart starts saving too."""
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    prefix = os.path.join(directory, "model")
    ours = tree_at(1000, writer=2)
    with Child(["saveloop", directory, "sync", 0, 1, 3], str(tmp_path / "err")) as a:
        assert (a.readline() or "").startswith("done"), a.stderr()
        refused = None
        deadline = time.monotonic() + 10
        while refused is None and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                js.Saver(lock_timeout=0).save(ours, prefix, 1000)
            except errors.CheckpointLockError as e:
                refused, elapsed = e, time.monotonic() - t0
        assert refused is not None, "the second writer was never refused"
        assert isinstance(refused, errors.CheckpointError)
        assert str(a.pid) in str(refused), str(refused)
        assert elapsed < 5.0, elapsed
        check_pickles(refused)
        t0 = time.monotonic()
        try:
            js.Saver(lock_timeout=0.5).save(ours, prefix, 1001)
        except errors.CheckpointLockError:
            assert time.monotonic() - t0 >= 0.45
        result = {}

        def wait_for_lock():
            try:
                result["path"] = js.Saver(lock_timeout=None).save(ours, prefix, 1002)
            except Exception as e:  # reported below
                result["error"] = e

        waiter = threading.Thread(target=wait_for_lock, daemon=True)
        waiter.start()
        time.sleep(0.3)
        a.kill()  # the lock dies with its holder
        waiter.join(30)
        assert not waiter.is_alive(), "a waiting writer never got the lock"
    assert "error" not in result, result
    assert result["path"] == os.path.join(directory, "model-1002")
    # Never a mixed checkpoint: each one is wholly one writer's save.
    for name in checkpoint_dirs(directory):
        step, writer, restored = restored_step(os.path.join(directory, name))
        assert writer in (1, 2), (name, writer)
        want = tree_at(step, writer)
        assert not tree_diff(restored, want), (name, tree_diff(restored, want))
    assert js.latest_checkpoint(directory) == result["path"]


# --------------------------------------------------------------- two threads


def test_savers_in_threads_neither_deadlock_nor_fail(tmp_path):
    """Four Savers in four threads: two share a directory, two have their own."""
    with Child(["threads", str(tmp_path)], str(tmp_path / "err")) as child:
        assert child.wait(timeout=90) == 0, child.stderr()
        assert child.lines, child.stderr()
        out = json.loads(child.lines[-1])
    assert out["alive"] == [], f"deadlocked threads: {out}"
    assert out["errors"] == [], out["errors"]
    assert out["finished"] == [1, 2, 3, 4]
    assert len(out["saved"]) == 16
    for path, step, writer in out["saved"]:
        restore_exact(path, tree_at(step, writer, size=1 << 15))
    for sub, writer in (("own3", 3), ("own4", 4)):
        latest = js.latest_checkpoint(tmp_path / sub)
        assert latest == str(tmp_path / sub / f"model_w{writer}-3")
    shared = js.latest_checkpoint(tmp_path / "shared")
    assert shared in (
        str(tmp_path / "shared" / "model_w1-3"),
        str(tmp_path / "shared" / "model_w2-3"),
    )


# ------------------------------------------------------- keys, paths, nesting


@pytest.mark.parametrize(
    "var_list",
    [
        {"a/b": "params/x", "a/b/": "params/y"},
        {"a//b": "params/x", "a/b": "params/y"},
        {"/a/b": "params/x", "a/b": "params/y"},
    ],
)
def test_colliding_keys_are_refused_at_construction(var_list):
    with pytest.raises(ValueError, match="a/b"):
        js.Saver(var_list)


def test_rotation_after_chdir_deletes_only_its_own_checkpoints(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "ckpt").mkdir(parents=True)
    (second / "ckpt").mkdir(parents=True)
    unrelated = tree_at(50, writer=3, size=64)
    js.Saver().save(unrelated, str(second / "ckpt" / "model"), 1, write_state=False)
    monkeypatch.chdir(first)
    saver = js.Saver(max_to_keep=2)
    saver.save(tree_at(1, size=64), "ckpt/model", 1)
    saver.save(tree_at(2, size=64), "ckpt/model", 2)
    monkeypatch.chdir(second)
    saver.save(tree_at(3, size=64), "ckpt/model", 3)  # goes to second/ckpt
    restore_exact(str(second / "ckpt" / "model-1"), unrelated)
    assert checkpoint_dirs(first / "ckpt") == ["model-2"]
    assert checkpoint_dirs(second / "ckpt") == ["model-1", "model-3"]
    restore_exact(str(first / "ckpt" / "model-2"), tree_at(2, size=64))
    restore_exact(str(second / "ckpt" / "model-3"), tree_at(3, size=64))


@pytest.mark.parametrize("inside", ["model-1", "model-1/d"])
def test_saving_inside_a_checkpoint_is_refused(tmp_path, inside):
    values = tree_at(1, size=64)
    path = js.Saver().save(values, str(tmp_path / "model"), 1)
    before = files_of(path)
    with pytest.raises(errors.CheckpointError, match="model-1"):
        js.Saver().save(values, str(tmp_path / inside / "inner"), 2)
    assert files_of(path) == before
    restore_exact(path, values)
    assert js.verify_checkpoint(path) == sorted(js.flatten(values))


# ------------------------------------------------------------------ pytrees


def test_optax_state_round_trips(tmp_path):
    params = {"dense": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}}
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: p * 0.5 + 1.0, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    values = {"params": params, "opt_state": opt_state}
    path = js.Saver().save(values, str(tmp_path / "model"), 3)
    target = {"params": params, "opt_state": optimizer.init(params)}
    restored = js.Saver().restore(path, jax.tree.map(jnp.zeros_like, target))
    assert jax.tree.structure(restored) == jax.tree.structure(values)
    for got, want in zip(
        jax.tree.leaves(restored), jax.tree.leaves(values), strict=True
    ):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert int(restored["opt_state"][0].count) == 3
    leaves = jax.tree_util.tree_leaves_with_path(values)
    assert len(js.verify_checkpoint(path)) == len(leaves)
    # The optimizer state alone, with a tuple at the root.
    path = js.Saver().save(opt_state, str(tmp_path / "opt"), 3)
    restored = js.Saver().restore(path, optimizer.init(params))
    assert jax.tree.structure(restored) == jax.tree.structure(opt_state)
    for got, want in zip(
        jax.tree.leaves(restored), jax.tree.leaves(opt_state), strict=True
    ):
        assert np.array_equal(got, want)


def test_typed_prng_keys_round_trip(tmp_path):
    values = {
        "rng": jax.random.key(7),
        "keys": jax.random.split(jax.random.key(1), 3),
        "rbg": jax.random.key(2, impl="rbg"),
    }
    path = js.Saver().save(values, str(tmp_path / "model"), 0)
    target = {
        "rng": jax.random.key(0),
        "keys": jax.random.split(jax.random.key(0), 3),
        "rbg": jax.random.key(0, impl="rbg"),
    }
    restored = js.Saver().restore(path, target)
    for name, want in values.items():
        got = restored[name]
        assert jax.dtypes.issubdtype(got.dtype, jax.dtypes.prng_key), name
        assert jax.random.key_impl(got) == jax.random.key_impl(want), name
        assert got.shape == want.shape, name
        assert np.array_equal(jax.random.key_data(got), jax.random.key_data(want))
    assert js.verify_checkpoint(path) == sorted(values)


def test_scalars_restore_as_what_the_target_holds(tmp_path):
    values = {"lr": 0.5, "n": 3, "flag": True, "f32": np.float32(1.25)}
    values["i64"] = np.int64(-4)
    path = js.Saver().save({"hp": values}, str(tmp_path / "model"), 0)
    target = {"hp": {"lr": 0.0, "n": 0, "flag": False, "f32": np.float32(0)}}
    target["hp"]["i64"] = np.int64(0)
    restored = js.Saver().restore(path, target)["hp"]
    for name, want in values.items():
        got = restored[name]
        assert type(got) is type(want), (name, type(got))
        assert got == want, (name, got)
    # Saved with the dtypes jax gives them (x64 off).
    assert js.load_variable(path, "hp/lr").dtype == jnp.float32
    assert js.load_variable(path, "hp/n").dtype == jnp.int32
    assert js.load_variable(path, "hp/i64").dtype == jnp.int32
