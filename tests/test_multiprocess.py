"""Two processes under ``jax.distributed`` against one process with 8 devices.

Runs ``tests/multiprocess_worker.py``: a one-process run with 8 CPU devices
(sharded init on a 2x4 mesh, one jitted optax step, a save), then two
processes on 127.0.0.1 with 4 CPU devices each and gloo collectives (the same
init and step, with the same numbers; saves, with process 0 committing; the
one-process checkpoint restored on a 4x2 mesh), then one process again
restoring the two-process checkpoint on 8 devices and on one. Every child has a
bounded time; on any failure all are killed and their output is shown.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).parent
WORKER = HERE / "multiprocess_worker.py"
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    env.pop("PYTEST_XDIST_WORKER", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def run_all(args_list: list[list[str]], logs: pathlib.Path) -> list[str]:
    """Runs the workers at once; returns their outputs; fails (all killed) if any
    fails or runs past `TIMEOUT_S`."""
    procs, files = [], []
    try:
        for i, args in enumerate(args_list):
            out = open(logs / f"{args[0]}-{i}.log", "w+")  # noqa: SIM115 (closed below)
            files.append(out)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_env(),
                    cwd=HERE.parent,
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: the others would wait for it
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    outputs = []
    for f in files:
        f.seek(0)
        outputs.append(f.read())
        f.close()
    codes = [p.returncode for p in procs]
    if codes != [0] * len(procs):
        shown = "\n".join(
            f"--- {' '.join(a)} (rc {c}) ---\n{o[-6000:]}"
            for a, c, o in zip(args_list, codes, outputs, strict=True)
        )
        pytest.fail(f"workers failed or timed out after {TIMEOUT_S} s:\n{shown}")
    return outputs


def test_two_processes_save_and_restore_against_one_process(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (single,) = run_all([["single-save", str(work)]], tmp_path)
    assert "OK single-save" in single, single

    port = str(free_port())
    outs = run_all(
        [["multi", str(work), port, "0"], ["multi", str(work), port, "1"]], tmp_path
    )
    loss = single.split("loss=")[1].split()[0]
    for i, out in enumerate(outs):
        for what in (
            "step",
            "save",
            "restore",
            "refused",
            "saved after",
            "damaged checksum",
            "damaged bit",
        ):
            assert f"OK multi {i} {what}" in out, out[-4000:]
        assert f"loss={loss}" in out, (loss, out[-2000:])
    # Both processes wrote their shards; process 0 committed the checkpoint.
    names = sorted(os.listdir(work / "multi" / "model-3"))
    assert {"ocdbt.process_0", "ocdbt.process_1", "_CHECKSUMS"} <= set(names), names
    for out in outs:
        assert "key=params/w1 " in out.split("damaged checksum")[1], out[-2000:]
    assert sorted(os.listdir(work / "multi")) == [
        ".checkpoint.lock",
        "checkpoint",
        "model-2",
        "model-3",
    ]

    (back,) = run_all([["single-restore", str(work)]], tmp_path)
    assert "OK single-restore" in back, back


def _stalled(tmp_path, role, **env):
    """Runs worker ``role`` as processes 0 and 1 (``env`` added to their
    environment); returns the message of the error process 1 reports. Process 0
    is killed once process 1 is done; its output is dropped."""
    port = str(free_port())
    procs = []
    try:
        for i in (0, 1):
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), role, str(tmp_path), port, str(i)],
                    stdout=subprocess.PIPE if i else subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    env=child_env(**env),
                    cwd=HERE.parent,
                    text=True,
                )
            )
        out, _ = procs[1].communicate(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[1].returncode == 0, out[-4000:]
    raised = "RAISED jscope.errors.CheckpointError after "
    assert raised in out, out[-4000:]
    waited = float(out.split(raised)[1].split()[0])
    assert 3.0 <= waited < 60.0, out[-4000:]
    return out.split("MESSAGE ", 1)[1]


def test_a_process_that_never_comes_is_a_checkpoint_error_after_the_timeout(tmp_path):
    """Process 0 never saves; process 1's save gives up after JSCOPE_BARRIER_TIMEOUT_S.

    The wait is the coordination service's; what comes out of it must be a
    `CheckpointError` that says who waited for whom, where, and how to fix it,
    not the service's DEADLINE_EXCEEDED.
    """
    message = _stalled(tmp_path, "stall", JSCOPE_BARRIER_TIMEOUT_S="3")
    assert message.startswith("Process 1 waited 3 s for process 0 to begin "), message
    assert repr(str(tmp_path / "stalled" / "model")) in message, message
    assert "JSCOPE_BARRIER_TIMEOUT_S" in message and "DEADLINE" not in message


def test_a_process_that_stops_before_a_restore_is_a_checkpoint_error(tmp_path):
    """Both save a checkpoint sharded across them; process 0 then never restores.

    Orbax's restore ends at a barrier without a timeout, so process 1 must not
    start reading alone: after JSCOPE_BARRIER_TIMEOUT_S it gets a
    `CheckpointError` naming both processes and the checkpoint, not a hang.
    """
    message = _stalled(tmp_path, "stall-restore")
    assert message.startswith(
        "Process 1 waited 3 s for process 0 to begin restore number 0 "
    ), message
    assert repr(str(tmp_path / "stalled-restore" / "model")) in message, message
    assert "JSCOPE_BARRIER_TIMEOUT_S" in message and "DEADLINE" not in message
