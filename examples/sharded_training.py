"""A small GPT trained on a mesh of devices: data- and model-parallel, by rules.

The model is GPT-2's shape in miniature, written with `js.layers`: token and
position embeddings (``wte``, ``wpe``), blocks of causal self-attention and an MLP
with layer norms (``h/ln_1``, ``h/attn``, ``h/ln_2``, ``h/mlp/c_fc``,
``h/mlp/c_proj``) stacked with `js.scan` (one compiled block, its variables
stacked on a leading dimension named ``"layers"``), a final layer norm ``ln_f``
and an output projection ``head``. The model code names no device and no mesh.

Where each variable lives is decided beside the model, by one `js.ShardingRules`
over a ``data`` × ``model`` mesh (``--mesh 2x4``: 2-way data parallel, 4-way
model parallel, Megatron style):

- the attention projections by **path rules** (regexes on the variable paths, as a
  model ported from TF1 would be sharded without touching its code): heads split
  over ``model``;
- everything else by the **logical axes** the layers declare (``embed``, ``mlp``,
  ``vocab``, ``layers``), mapped to mesh axes: the MLP's hidden units and the
  vocabulary split over ``model``, the rest replicated; the batch (``batch``) is
  split over ``data``.

`js.summary` with the rules prints every variable's spec and the bytes one device
holds of it; `js.init` with the rules creates every variable directly in its
shards (the whole model never exists on one device); the optimizer state is
sharded like the parameters; the train step is one `jax.jit` with those shardings.

The text ships with Python, so nothing is downloaded: the help topics of the
Python language reference in the standard library's ``pydoc_data/topics.py``
(about 450,000 characters of English prose and code), read as ASCII bytes
(vocabulary 128); where an install lacks that module, Python's ``LICENSE.txt``.
A uniform guess costs log(128) = 4.85 nats per character; the default run brings
the loss to about 2.3.

Devices. Without an accelerator the script simulates 8 CPU devices by setting
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax is imported
(the flag touches only the CPU platform: on GPUs or TPUs the mesh is made of
those). ``--processes 2`` runs the same program as 2 processes on this machine,
4 CPU devices each, as a 2-host pod would: each child calls
``jax.distributed.initialize`` (a coordinator on 127.0.0.1 and a free port,
gloo collectives), loads only its own rows of every batch and builds the global
batch with ``jax.make_array_from_process_local_data``. Batches depend only on the
seed, the step and the row, so 1 and 2 processes see the same data and print the
same losses (up to the order of floating-point sums).

``--checkpoint DIR`` saves the trained parameters with `js.Saver` (each process
writes its own shards) and restores them into a target of
`jax.ShapeDtypeStruct`s carrying the same shardings.

Run it with:

    python examples/sharded_training.py                 # mesh 2x4, 200 steps, ~2 min
    python examples/sharded_training.py --mesh 4x2 --steps 400
    python examples/sharded_training.py --processes 2   # 2 processes x 4 devices
    python examples/sharded_training.py --checkpoint /tmp/gpt  # save, restore
    python examples/sharded_training.py --quick         # a tiny model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Sequence

import _cli
import numpy as np

# XLA fixes the number of simulated CPU devices when jax is imported: set it
# first. A process started by --processes gets its own count from its parent.
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
if _DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), f"{_DEVICE_COUNT_FLAG}=8"]
    ).strip()

import jax  # noqa: E402 (after the flag)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jscope as js  # noqa: E402

# -------------------------------------------------------------------- the text


def load_text() -> tuple[bytes, str]:
    """Returns ``(ASCII bytes, their source)``, from files shipped with Python."""
    try:
        from pydoc_data import topics  # the language reference's help topics

        text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
        source = "pydoc_data/topics.py (Python language reference help topics)"
    except ImportError:
        path = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
        text, source = path.read_text(encoding="utf-8", errors="replace"), str(path)
    return text.encode("ascii", errors="replace"), source


# ------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 128  # ASCII
    length: int = 64  # context, characters
    embed: int = 128
    heads: int = 4
    mlp: int = 512
    layers: int = 4


QUICK = Config(length=32, embed=32, heads=4, mlp=128, layers=2)


def block(cfg: Config, h: jax.Array, _) -> tuple[jax.Array, None]:
    """One pre-norm transformer block: causal self-attention, then an MLP."""
    x = js.layers.layer_norm(h, name="ln_1")
    h = h + js.layers.multi_head_attention(
        x, num_heads=cfg.heads, causal=True, name="attn"
    )
    x = js.layers.layer_norm(h, name="ln_2")
    with js.variable_scope("mlp"):
        x = js.layers.dense(x, cfg.mlp, activation=jax.nn.gelu, name="c_fc")
        x = js.constrain(x, ("batch", None, "mlp"))
        # The projection back reads the hidden units: its kernel is [mlp, embed].
        x = js.layers.dense(
            x,
            cfg.embed,
            name="c_proj",
            kernel_axes=("mlp", "embed"),
            bias_axes=("embed",),
        )
    return js.constrain(h + x, ("batch", None, "embed")), None


def gpt(cfg: Config, ids: jax.Array) -> jax.Array:
    """Logits of the next character at every position of ``ids`` [batch, time]."""
    h = js.layers.embedding(ids, cfg.vocab, cfg.embed, name="wte")
    wpe = js.get_variable(
        "wpe",
        (cfg.length, cfg.embed),
        initializer=js.initializers.random_normal(stddev=0.02),
        axes=(None, "embed"),
    )
    h = js.constrain(h + wpe[: ids.shape[1]], ("batch", None, "embed"))
    with js.variable_scope("h"):
        stack = js.scan(
            functools.partial(block, cfg),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=cfg.layers,
            axis_name="layers",
        )
        h, _ = stack(h)
    h = js.layers.layer_norm(h, name="ln_f")
    logits = js.layers.dense(
        h, cfg.vocab, name="head", kernel_axes=("embed", "vocab"), bias_axes=("vocab",)
    )
    return js.constrain(logits, ("batch", None, "vocab"))


def sharding_rules(mesh: jax.sharding.Mesh) -> js.ShardingRules:
    """Where every variable and activation of `gpt` lives on a data × model mesh."""
    return js.ShardingRules(
        mesh,
        # The attention by path (stacked shapes: [layers, embed, heads, head_dim]
        # and [layers, heads, head_dim, embed]): its heads split over "model".
        paths=[
            (r"h/attn/(query|key|value)/kernel", (None, None, "model", None)),
            (r"h/attn/(query|key|value)/bias", (None, "model", None)),
            (r"h/attn/output/kernel", (None, "model", None, None)),
        ],
        # The rest by the logical axes the layers and get_variable declare.
        axes={
            "batch": "data",
            "vocab": "model",
            "mlp": "model",
            "embed": None,
            "layers": None,
        },
    )


# ---------------------------------------------------------------------- data


def local_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> np.ndarray:
    """The batch rows whose shards live on this process's devices, in order."""
    spans = {
        (index[0].start or 0, shape[0] if index[0].stop is None else index[0].stop)
        for index in sharding.addressable_devices_indices_map(shape).values()
    }
    return np.concatenate([np.arange(a, b) for a, b in sorted(spans)])


def load_batch(data: np.ndarray, rows: np.ndarray, step: int, length: int, seed: int):
    """This process's rows of batch ``step``: ``(ids, targets)``, [rows, length].

    Row ``r`` of step ``s`` is a window of the text at an offset drawn from
    ``(seed, s, r)`` alone, so any process can load any row without the others.
    """
    starts = [
        np.random.default_rng((seed, step, int(r))).integers(len(data) - length - 1)
        for r in rows
    ]
    window = np.stack([data[s : s + length + 1] for s in starts]).astype(np.int32)
    return window[:, :-1], window[:, 1:]


# ---------------------------------------------------------------- training


def optimizer_shardings(opt, params, param_shardings, mesh):
    """The optimizer state's shardings: like the parameters, the rest replicated."""
    return optax.tree_map_params(
        opt,
        lambda _, sharding: sharding,
        jax.eval_shape(opt.init, params),
        param_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, P()),
    )


def make_train_step(cfg, rules, opt, param_shardings, opt_shardings, batch_sharding):
    def loss_fn(params, ids, targets):
        logits = js.apply(gpt, {"params": params}, cfg, ids, rules=rules)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), targets
        )
        return losses.mean()

    def train_step(params, opt_state, ids, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, targets)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    replicated = NamedSharding(rules.mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding, batch_sharding),
        out_shardings=(param_shardings, opt_shardings, replicated),
        donate_argnums=(0, 1),
    )


# ------------------------------------------------------------ the processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward(stream) -> None:
    for line in stream:  # gloo's threads print their connections, even mid-line
        if "[Gloo]" not in line and "connected peer ranks" not in line:
            sys.stdout.write(line)
            sys.stdout.flush()


def launch(n: int, argv: list[str], timeout: float) -> int:
    """Runs this script as ``n`` processes on this machine, as ``n`` hosts would.

    Each child gets ``8 // n`` CPU devices and the coordinator's address; if one
    fails or the run takes longer than ``timeout`` seconds, the others are killed.
    """
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if _DEVICE_COUNT_FLAG not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_COUNT_FLAG}={8 // n}"])
    env["JAX_PLATFORMS"] = "cpu"
    coordinator = f"127.0.0.1:{_free_port()}"
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *argv, "--process-id", str(i)]
            + ["--coordinator", coordinator],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C is passed on by this process
        )
        for i in range(n)
    ]
    # Each child's lines are passed on whole, without gloo's connection messages.
    forwarders = [
        threading.Thread(target=_forward, args=(child.stdout,), daemon=True)
        for child in children
    ]
    for thread in forwarders:
        thread.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [c.poll() for c in children]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                print(f"process {failed[0]} failed (exit code {codes[failed[0]]})")
                return 1
            if all(code == 0 for code in codes):
                return 0
            if time.monotonic() > deadline:
                print(f"the processes did not finish in {timeout:.0f} s")
                return 1
            time.sleep(0.1)
    except KeyboardInterrupt:
        # The children run in their own sessions: a Ctrl-C reaches only this
        # process, which passes it on once; the first child says where it stopped.
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=60)
        return _cli.EXIT_INTERRUPTED
    finally:
        for child in children:  # a failed or late run leaves no process behind
            if child.poll() is None:
                child.kill()
            child.wait()
        for thread in forwarders:
            thread.join(timeout=10)


# -------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--mesh", default="2x4", help="data x model devices, e.g. 2x4 or 4x2"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: 200; 30 with --quick)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="global batch, in sequences (default: 16)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model, 30 steps, in seconds"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the init and the batches"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run as this many processes on this machine: 1, 2, 4 or 8",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="seconds the processes may take, with --processes",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="save the trained parameters here, then restore them "
        "(default: none, nothing is saved)",
    )
    # Set by `launch` for each child process.
    parser.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_mesh(spec: str) -> jax.sharding.Mesh:
    shape = tuple(int(n) for n in spec.lower().split("x"))
    if len(shape) != 2 or math.prod(shape) != jax.device_count():
        raise SystemExit(
            f"--mesh {spec}: need data x model with {jax.device_count()} devices "
            f"in all (found {jax.device_count()} {jax.default_backend()} devices)"
        )
    # Auto axes: XLA propagates the shardings that the rules and js.constrain set.
    return jax.make_mesh(shape, ("data", "model"), (AxisType.Auto, AxisType.Auto))


def describe_mesh(mesh: jax.sharding.Mesh) -> str:
    grid = np.vectorize(lambda d: f"{d.id}@p{d.process_index}")(mesh.devices)
    rows = "\n".join("  " + "  ".join(f"{c:>6}" for c in row) for row in grid)
    return (
        f"mesh {dict(mesh.shape)}: {mesh.devices.size} {jax.default_backend()} "
        f"devices, {jax.process_count()} process(es); device@process by "
        f"(data, model):\n{rows}"
    )


class Interrupted(Exception):
    """Ctrl-C during training ``step``."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def train(args, cfg: Config, mesh, say) -> dict:
    text, source = load_text()
    data = np.frombuffer(text, np.uint8)
    say(f"text: {source}, {len(data):,} characters")
    steps = args.steps or (30 if args.quick else 200)
    batch = args.batch or 16
    lr = 1e-2 if args.quick else 3e-3

    rules = sharding_rules(mesh)
    key = jax.random.key(args.seed)
    example = jnp.zeros((batch, cfg.length), jnp.int32)
    summary = js.summary(gpt, key, cfg, example, rules=rules)
    if jax.process_index() == 0:  # rich's table on a terminal, plain text in logs
        if sys.stdout.isatty() and _cli.rich_available():
            summary.print_rich()
        else:
            print(summary)
    specs = js.partition_specs(gpt, key, cfg, example, rules=rules)
    unused = rules.unused(specs)
    say(f"path rules that matched no variable: {unused or 'none'}")

    # Sharded init: one jit whose outputs are the shards; compare with the plan.
    variables = js.init(gpt, key, cfg, example, rules=rules)
    params = variables["params"]
    device = jax.local_devices()[0]
    on_one = sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(params)
        for shard in leaf.addressable_shards
        if shard.device == device
    )
    say(
        f"sharded init: device {device.id} holds {on_one:,} bytes of "
        f"{summary.total_bytes:,} (summary: {summary.total_device_bytes:,} per device)"
    )

    param_shardings = js.shardings(specs, rules)["params"]
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr))
    opt_shardings = optimizer_shardings(opt, params, param_shardings, mesh)
    opt_state = jax.jit(opt.init, out_shardings=opt_shardings)(params)
    batch_sharding = NamedSharding(mesh, P("data", None))
    train_step = make_train_step(
        cfg, rules, opt, param_shardings, opt_shardings, batch_sharding
    )

    global_shape = (batch, cfg.length)
    rows = local_rows(batch_sharding, global_shape)
    say(f"process {jax.process_index()} loads rows {rows[0]}..{rows[-1]} of each batch")
    log_every = max(1, steps // 10)
    losses = []
    step = 0
    try:
        with _cli.progress(steps, show=jax.process_index() == 0) as bar:
            for step in range(1, steps + 1):
                ids, targets = (
                    jax.make_array_from_process_local_data(
                        batch_sharding, a, global_shape
                    )
                    for a in load_batch(data, rows, step, cfg.length, args.seed)
                )
                params, opt_state, loss = train_step(params, opt_state, ids, targets)
                losses.append(float(loss))
                bar.update(step, loss=losses[-1])
                if step % log_every == 0 or step == 1:
                    say(f"step {step:>5}/{steps}  loss {losses[-1]:.4f}")
    except KeyboardInterrupt:
        raise Interrupted(step) from None
    k = max(1, steps // 10)
    say(
        f"mean loss: first {k} steps {np.mean(losses[:k]):.4f} -> last {k} steps "
        f"{np.mean(losses[-k:]):.4f} (uniform guess {math.log(cfg.vocab):.4f})"
    )
    if args.checkpoint:
        save_and_restore(params, args.checkpoint, steps, say)
    return params


def save_and_restore(params, directory: str, step: int, say) -> None:
    """Saves the sharded params (each process its shards), restores into shardings."""
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
        {"params": params},
    )
    with js.Saver(max_to_keep=2) as saver:
        path = saver.save({"params": params}, os.path.join(directory, "gpt"), step)
        restored = saver.restore(path, target)
    same = all(
        a.sharding == b.sharding
        and all(
            np.array_equal(x.data, y.data)
            for x, y in zip(a.addressable_shards, b.addressable_shards, strict=True)
        )
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored), strict=True)
    )
    say(f"saved {path}; restored into the same shardings, equal: {same}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.processes > 1 and args.process_id is None:
        return launch(args.processes, argv, args.timeout)
    if args.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.processes,
            process_id=args.process_id,
            initialization_timeout=120,
        )
    start = time.perf_counter()

    def say(line: str) -> None:
        if jax.process_index() == 0 or line.startswith("process "):
            print(line, flush=True)

    mesh = make_mesh(args.mesh)
    say(describe_mesh(mesh))
    try:
        train(args, QUICK if args.quick else Config(), mesh, say)
    except Interrupted as e:
        if jax.process_index() != 0:  # the first process says it for all
            return _cli.EXIT_INTERRUPTED
        # Nothing is saved before the end: a rerun starts again.
        return _cli.interrupted(f"step {e.step}", None)
    say(f"total {time.perf_counter() - start:.1f} s")
    if args.process_id is not None:
        with contextlib.suppress(Exception):  # the coordinator may be gone already
            jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    _cli.run(main)
