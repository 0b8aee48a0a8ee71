"""Fault injection for checkpoint tests: child savers, mounts, corrupted files.

Imported by ``tests/test_checkpoint_faults.py``; also run as a script, the child
processes that the tests kill, lock out or start again::

    python tests/checkpoint_fault_tools.py saveloop DIR MODE START WRITER KEEP
    python tests/checkpoint_fault_tools.py run DIR FIRST COUNT KEEP
    python tests/checkpoint_fault_tools.py threads DIR
    python tests/checkpoint_fault_tools.py failed_save DIR CHECKPOINT SIZE_LIMIT
    python tests/checkpoint_fault_tools.py big_save DIR write|install

Every value a child saves is a function of ``(step, writer)`` (`tree_at`), so the
parent can check any checkpoint bit by bit against what was saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N_ARRAYS = 4
ARRAY_SIZE = 1 << 18  # 4 arrays of 1 MiB each per checkpoint
CHILD_TIMEOUT_S = 60.0


# ------------------------------------------------------------------- values


def tree_at(step: int, writer: int = 0, size: int = ARRAY_SIZE) -> dict:
    """The NumPy tree a writer saves at a step: every value depends on both."""
    import ml_dtypes

    base = np.arange(size, dtype=np.float32)
    offset = np.float32(step + writer * (1 << 22))
    params = {f"w{i}": base * np.float32(i + 1) + offset for i in range(N_ARRAYS)}
    params["h"] = (np.arange(256, dtype=np.float32) + offset).astype(ml_dtypes.bfloat16)
    state = {"step": np.array(step, np.int32), "writer": np.array(writer, np.int32)}
    return {"params": params, "state": state}


def zeros_like(tree):
    """A restore target: the tree's structure, shapes and dtypes, zero values."""
    if isinstance(tree, dict):
        return {k: zeros_like(v) for k, v in tree.items()}
    return np.zeros_like(tree)


def tree_diff(got, want, prefix: str = "") -> list[str]:
    """The paths where ``got`` differs from ``want`` in structure, dtype or bits."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or sorted(got) != sorted(want):
            return [f"{prefix or '<root>'}: keys {sorted(got)} != {sorted(want)}"]
        out = []
        for k in want:
            out += tree_diff(got[k], want[k], f"{prefix}/{k}" if prefix else k)
        return out
    g, w = np.asarray(got), np.asarray(want)
    if g.shape != w.shape or g.dtype != w.dtype:
        return [f"{prefix}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"]
    if g.tobytes() != w.tobytes():
        return [f"{prefix}: values differ"]
    return []


# ----------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """The environment of a child: this jscope, CPU only, no preallocation."""
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


class Child:
    """A child process of this script; killed (SIGKILL) and reaped on exit.

    Its stdout is read line by line with a deadline, its stderr goes to a file
    so that failures can show it.
    """

    def __init__(self, args: list[str], stderr_path: str, prefix: list[str] = ()):
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 closed in close()
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, os.path.join(HERE, "checkpoint_fault_tools.py")]
            + [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env(),
        )
        self.pid = self.proc.pid
        self._buffer = b""
        self.lines: list[str] = []

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def readline(self, timeout: float = CHILD_TIMEOUT_S) -> str | None:
        """The next line of stdout, or None at end of output or after timeout."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode()
        self.lines.append(text)
        return text

    def kill(self) -> None:
        """SIGKILL, reap, and read what the child printed before it died."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=CHILD_TIMEOUT_S)
        while self.readline(timeout=5.0) is not None:
            pass

    def wait(self, timeout: float = CHILD_TIMEOUT_S) -> int:
        """Waits for the exit (SIGKILL after ``timeout``); returns the status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"child {self.proc.args} did not exit within {timeout} s (a "
                f"deadlock, or threads that never end?); stderr:\n{self.stderr()}"
            ) from None
        while self.readline(timeout=5.0) is not None:
            pass
        return self.proc.returncode

    def stderr(self) -> str:
        self._stderr.flush()
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=CHILD_TIMEOUT_S)
        self.proc.stdout.close()
        self._stderr.close()


def numbers(lines: list[str], word: str) -> list[int]:
    """The integers of the lines ``"<word> <n>"``."""
    return [int(x.split()[1]) for x in lines if x.startswith(word + " ")]


# --------------------------------------------------------------------- mounts


def mount_tmpfs(path: str, size: str) -> str | None:
    """Mounts a tmpfs of ``size`` at ``path``; None, or why it cannot."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        return f"mount -t tmpfs failed: {proc.stderr.strip() or proc.returncode}"
    return None


def remount_read_only(path: str) -> None:
    subprocess.run(
        ["mount", "-o", "remount,ro", path], check=True, capture_output=True, timeout=30
    )


def unmount(path: str) -> None:
    """Unmounts ``path`` (lazily if busy); no error if it is not mounted."""
    if subprocess.run(["umount", path], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def without_dac_override() -> list[str] | None:
    """A command prefix that runs a root child without overriding file modes."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


# ------------------------------------------------------------------ corruption


def files_of(directory: str) -> list[str]:
    """Every file under ``directory``, as sorted relative paths."""
    out = []
    for root, _, files in os.walk(directory):
        out += [os.path.relpath(os.path.join(root, f), directory) for f in files]
    return sorted(out)


def corrupt(path: str, mode: str, bit: int | None = None) -> None:
    """Deletes, empties, truncates (to half) or flips one bit of a file."""
    if mode == "delete":
        os.unlink(path)
        return
    size = os.path.getsize(path)
    if mode == "empty":
        os.truncate(path, 0)
    elif mode == "truncate":
        os.truncate(path, size // 2)
    elif mode == "flip":
        bit = size * 4 if bit is None else bit  # the middle of the file
        with open(path, "r+b") as f:
            f.seek(bit // 8)
            byte = f.read(1)[0]
            f.seek(bit // 8)
            f.write(bytes([byte ^ (1 << (bit % 8))]))
            f.flush()
            os.fsync(f.fileno())
    else:
        raise ValueError(mode)


# ------------------------------------------------------------ child programs


def _saveloop(directory: str, mode: str, start: int, writer: int, keep: int) -> None:
    """Saves ``tree_at(step, writer)`` for step = start, start+1, ... forever.

    Prints ``done <step>`` once the save of ``step`` is complete and recorded:
    right after a blocking save, after the next save returns for a non-blocking
    one (a save first waits for the pending one).
    """
    import jscope as js

    saver = js.Saver(max_to_keep=keep)
    prefix = os.path.join(directory, "model")
    blocking = mode in ("sync", "overwrite")
    step = start
    while True:
        values = tree_at(step, writer)
        if mode in ("sync", "async"):
            saver.save(values, prefix, global_step=step, blocking=blocking)
        elif mode == "overwrite":
            saver.save(values, prefix, blocking=True)
        elif mode == "overwrite_step":
            saver.save(values, prefix, global_step=7, blocking=False)
        else:
            raise ValueError(mode)
        if blocking:
            print(f"done {step}", flush=True)
        elif step > start:
            print(f"done {step - 1}", flush=True)
        step += 1


def _run(directory: str, first: int, count: int, keep: int) -> None:
    """One run of a training job: a new Saver, ``count`` saves, then exit."""
    import jscope as js

    saver = js.Saver(max_to_keep=keep)
    for step in range(first, first + count):
        saver.save(tree_at(step, size=64), os.path.join(directory, "model"), step)
    print("ok", flush=True)


def _threads(directory: str) -> None:
    """Savers in threads: two in one directory, two in directories of their own.

    Prints one JSON line: the threads that finished, their errors, and the
    checkpoints they returned, ``[path, step, writer]``. Exits with os._exit so
    that a deadlocked thread cannot hang the interpreter's exit.
    """
    import jscope as js

    plan = [("shared", 1), ("shared", 2), ("own3", 3), ("own4", 4)]
    saved, errors, finished = [], [], []
    barrier = threading.Barrier(len(plan))

    def work(sub: str, writer: int) -> None:
        try:
            saver = js.Saver(max_to_keep=None)
            prefix = os.path.join(directory, sub, f"model_w{writer}")
            barrier.wait(timeout=30)
            for step in range(4):
                values = tree_at(step, writer, size=1 << 15)
                path = saver.save(values, prefix, step, blocking=step % 2 == 0)
                saved.append([path, step, writer])
            saver.wait_until_finished()
            finished.append(writer)
        except BaseException as e:  # reported to the parent
            errors.append(f"writer {writer}: {type(e).__name__}: {e}")

    threads = [
        threading.Thread(target=work, args=p, daemon=True, name=f"w{p[1]}")
        for p in plan
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 40.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    result = {"finished": sorted(finished), "alive": alive, "errors": errors}
    result["saved"] = saved
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)


def _failed_save(directory: str, checkpoint: str, size: int) -> None:
    """Saves ``tree_at(1, size)`` where it cannot be written, then restores.

    The parent arranges the fault: a directory this process may not write, or
    a file size limit (``size`` > 0: RLIMIT_FSIZE of ``size`` bytes, SIGXFSZ
    ignored, so that writes past it fail with EFBIG). Prints one JSON line
    describing the save's error and whether ``checkpoint`` still restores.
    """
    import pickle
    import resource

    import jscope as js

    values = tree_at(1, size=64 if size == 0 else size // 2)
    if size:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    out: dict = {}
    write_error = getattr(js.errors, "CheckpointWriteError", ())
    try:
        js.Saver().save(values, os.path.join(directory, "model"), 1)
        out["save"] = "returned"
    except Exception as e:  # reported to the parent
        again = pickle.loads(pickle.dumps(e))
        out.update(
            save="raised",
            cls=type(e).__name__,
            write_error=isinstance(e, write_error),
            checkpoint_error=isinstance(e, js.errors.CheckpointError),
            os_error=isinstance(e, OSError),
            errno=getattr(e, "errno", None),
            message=str(e),
            pickled=[type(again).__name__, str(again), getattr(again, "errno", None)],
        )
    try:
        restored = js.Saver().restore(checkpoint, zeros_like(tree_at(0, size=64)))
        out["restore"] = tree_diff(restored, tree_at(0, size=64)) or "exact"
        out["latest"] = js.latest_checkpoint(directory)
    except Exception as e:  # reported to the parent
        out["restore"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)


def _big_save(directory: str, where: str) -> None:
    """Starts one large non-blocking save, held at ``where``; the parent kills it.

    ``where``: ``"write"`` holds the save's thread before it waits for Orbax's
    writes (Orbax goes on writing into the temporary directory), ``"install"``
    after the checksums are written and before the move into place. The child
    prints ``holding`` once the save is held there.
    """
    import jscope as js
    from jscope._src.checkpoint import layout, orbax_io

    module, name = {
        "write": (orbax_io, "finish_save"),
        "install": (layout, "fsync_tree"),
    }[where]
    original = getattr(module, name)

    def hold(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            print("holding", flush=True)
            time.sleep(CHILD_TIMEOUT_S)
        return original(*args, **kwargs)

    setattr(module, name, hold)
    values = tree_at(0, size=1 << 22)  # 64 MiB
    js.Saver().save(values, os.path.join(directory, "model"), 1, blocking=False)
    time.sleep(CHILD_TIMEOUT_S)


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "saveloop":
        _saveloop(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    elif command == "run":
        _run(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif command == "threads":
        _threads(args[0])
    elif command == "failed_save":
        _failed_save(args[0], args[1], int(args[2]))
    elif command == "big_save":
        _big_save(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
