"""Cold init: time from imports done to variables ready, jscope vs Flax, Haiku, Equinox.

A user's first `js.init` runs in a fresh process, where every distinct
variable shape used to cost XLA a compile of its random-number kernel. Each
measurement here is one **fresh Python process** with the persistent
compilation cache off (``JAX_COMPILATION_CACHE_DIR`` removed from its
environment, ``JAX_ENABLE_COMPILATION_CACHE=false``): after its imports it
starts a clock, makes the key (and the input, for the libraries whose init runs
the model), initializes the model and blocks until every variable is ready
(``block_until_ready``).

Models, each written four times with the same variable shapes (Equinox's
kernels in its own layout, OIHW and ``(out, in)``), every library using its own
default initializers:

- ``unet``: a pix2pix-like conv U-Net on 128x128x3 images, 7 levels of three
  3x3 convolutions down, a bottleneck of two, 7 levels up (nearest upsampling,
  a 2x2 convolution, a skip concatenation, three 3x3 convolutions), a 1x1
  output: 52 convolutions with distinct widths, so 52 distinct 4-D kernel
  shapes, 104 variables;
- ``transformer``: 12 pre-norm blocks (4-head attention and an MLP) over 16
  tokens of a 512-word vocabulary, model width 128, each block's attention and
  MLP widths distinct: 198 variables;
- ``digits``: the CNN of ``examples/digits_cnn.py`` (two convolutions with batch
  norm, dropout, a dense layer).

jscope's, Flax's and Haiku's inits run the model once on an input (their
``init`` is a forward pass); Equinox builds its modules from a key and needs
none. Rounds are interleaved (every model and library once per round, in a new
random order) and each reports its median over rounds; the ratio of jscope to
a peer is the median over rounds of the two times in the same round. Target:
jscope at most 0.2x the fastest peer on ``unet`` and ``transformer``.

Check (exit code 1, ``CHECK FAILED``): the four libraries make the same number
of variables with the same multiset of sizes on ``unet`` and ``transformer``.

Usage::

    python benchmarks/bench_init.py            # 3 rounds (tens of minutes, loaded)
    python benchmarks/bench_init.py --rounds 5
    python benchmarks/bench_init.py --models transformer   # one model only
    python benchmarks/bench_init.py --quick    # small models, one round, one
                                               # process per library (a smoke test)

Missed timing targets are reported as FAIL but do not change the exit code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
LIBRARIES = ("jscope", "flax linen", "haiku", "equinox")
MODELS = ("unet", "transformer", "digits")
TARGET = 0.2  # jscope / fastest peer, on unet and transformer

# Full and quick sizes: U-Net levels (of 3 convs down, 4 up), transformer blocks.
# Quick: no level (the bottleneck's two convs and the output conv), one block.
SIZES = {False: {"levels": 7, "blocks": 12}, True: {"levels": 0, "blocks": 1}}
IMAGE = 128
WIDTH, HEADS, VOCAB, TOKENS = 128, 4, 512, 16


# ------------------------------------------------------------------ shapes


def enc_width(level: int, i: int) -> int:
    return 8 + 10 * level + 2 * i  # even: distinct from every decoder width


def dec_width(level: int, i: int) -> int:
    return 9 + 10 * level + 2 * i  # i = 0 the 2x2 up-convolution


def bottleneck_width(levels: int, i: int) -> int:
    return 10 * levels + 10 + 2 * i


def attn_width(block: int) -> int:
    return WIDTH + 16 * block


def mlp_width(block: int) -> int:
    return 2 * WIDTH + 32 * block


# ------------------------------------------------------------------ jscope


def js_models(levels: int, blocks: int):
    import jax
    import jax.numpy as jnp

    import jscope as js

    def upsample(x):
        return jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)

    def unet(x):
        relu, conv = jax.nn.relu, js.layers.conv2d
        skips = []
        for level in range(levels):
            for i in range(3):
                x = relu(conv(x, enc_width(level, i), 3, padding="SAME"))
            skips.append(x)
            x = js.layers.max_pool(x, 2)
        for i in range(2):
            x = relu(conv(x, bottleneck_width(levels, i), 3, padding="SAME"))
        for level in reversed(range(levels)):
            x = relu(conv(upsample(x), dec_width(level, 0), 2, padding="SAME"))
            x = jnp.concatenate([x, skips[level]], -1)
            for i in range(1, 4):
                x = relu(conv(x, dec_width(level, i), 3, padding="SAME"))
        return conv(x, 3, 1)

    def attention(h, block):
        a, d = attn_width(block), attn_width(block) // HEADS
        q, k, v = (
            js.layers.dense(h, a, name=n).reshape(*h.shape[:-1], HEADS, d)
            for n in ("q", "k", "v")
        )
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(*h.shape[:-1], a)
        return js.layers.dense(out, WIDTH, name="o")

    def transformer(tokens):
        h = js.layers.embedding(tokens, VOCAB, WIDTH, name="embed")
        h = h + js.get_variable("pos", (TOKENS, WIDTH))
        for block in range(blocks):
            with js.variable_scope(f"block{block}"):
                h = h + attention(js.layers.layer_norm(h, name="ln1"), block)
                m = js.layers.layer_norm(h, name="ln2")
                m = jax.nn.gelu(js.layers.dense(m, mlp_width(block), name="mlp1"))
                h = h + js.layers.dense(m, WIDTH, name="mlp2")
        h = js.layers.layer_norm(h, name="ln_f")
        return js.layers.dense(h, VOCAB, name="head")

    sys.path.insert(0, str(HERE.parent / "examples"))
    from digits_cnn import cnn  # pyright: ignore[reportMissingImports]

    def init(model, key):
        if model == "unet":
            return js.init(unet, key, jnp.ones((1, IMAGE, IMAGE, 3)))
        if model == "transformer":
            return js.init(transformer, key, jnp.zeros((1, TOKENS), jnp.int32))
        return js.init(cnn, key, jnp.ones((1, 8, 8, 1)), True)

    return init


# -------------------------------------------------------------------- flax


def flax_models(levels: int, blocks: int):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def upsample(x):
        return jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)

    class UNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            skips = []
            for level in range(levels):
                for i in range(3):
                    x = nn.relu(nn.Conv(enc_width(level, i), (3, 3))(x))
                skips.append(x)
                x = nn.max_pool(x, (2, 2), (2, 2))
            for i in range(2):
                x = nn.relu(nn.Conv(bottleneck_width(levels, i), (3, 3))(x))
            for level in reversed(range(levels)):
                x = nn.relu(nn.Conv(dec_width(level, 0), (2, 2))(upsample(x)))
                x = jnp.concatenate([x, skips[level]], -1)
                for i in range(1, 4):
                    x = nn.relu(nn.Conv(dec_width(level, i), (3, 3))(x))
            return nn.Conv(3, (1, 1))(x)

    class Block(nn.Module):
        block: int

        @nn.compact
        def __call__(self, h):
            a = attn_width(self.block)
            d = a // HEADS
            x = nn.LayerNorm()(h)
            q, k, v = (nn.Dense(a)(x).reshape(*h.shape[:-1], HEADS, d) for _ in "qkv")
            w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5)
            out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(*h.shape[:-1], a)
            h = h + nn.Dense(WIDTH)(out)
            m = nn.gelu(nn.Dense(mlp_width(self.block))(nn.LayerNorm()(h)))
            return h + nn.Dense(WIDTH)(m)

    class Transformer(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            h = nn.Embed(VOCAB, WIDTH)(tokens)
            h = h + nn.Embed(TOKENS, WIDTH)(jnp.arange(TOKENS))
            for block in range(blocks):
                h = Block(block)(h)
            return nn.Dense(VOCAB)(nn.LayerNorm()(h))

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            bn = {"use_running_average": False, "momentum": 0.9, "epsilon": 1e-3}
            h = nn.relu(nn.BatchNorm(**bn)(nn.Conv(32, (3, 3))(x)))
            h = nn.max_pool(h, (2, 2), (2, 2))
            h = nn.relu(nn.BatchNorm(**bn)(nn.Conv(64, (3, 3))(h)))
            h = nn.Dropout(0.3, deterministic=False)(h.reshape(h.shape[0], -1))
            return nn.Dense(10)(h)

    def init(model, key):
        if model == "unet":
            return UNet().init(key, jnp.ones((1, IMAGE, IMAGE, 3)))
        if model == "transformer":
            return Transformer().init(key, jnp.zeros((1, TOKENS), jnp.int32))
        rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
        return CNN().init(rngs, jnp.ones((1, 8, 8, 1)))

    return init


# ------------------------------------------------------------------- haiku


def haiku_models(levels: int, blocks: int):
    import haiku as hk
    import jax
    import jax.numpy as jnp

    def upsample(x):
        return jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)

    def unet(x):
        skips = []
        for level in range(levels):
            for i in range(3):
                x = jax.nn.relu(hk.Conv2D(enc_width(level, i), 3)(x))
            skips.append(x)
            x = hk.max_pool(x, 2, 2, "VALID")
        for i in range(2):
            x = jax.nn.relu(hk.Conv2D(bottleneck_width(levels, i), 3)(x))
        for level in reversed(range(levels)):
            x = jax.nn.relu(hk.Conv2D(dec_width(level, 0), 2)(upsample(x)))
            x = jnp.concatenate([x, skips[level]], -1)
            for i in range(1, 4):
                x = jax.nn.relu(hk.Conv2D(dec_width(level, i), 3)(x))
        return hk.Conv2D(3, 1)(x)

    def layer_norm(h):
        return hk.LayerNorm(-1, create_scale=True, create_offset=True)(h)

    def transformer(tokens):
        h = hk.Embed(VOCAB, WIDTH)(tokens)
        h = h + hk.Embed(TOKENS, WIDTH)(jnp.arange(TOKENS))
        for block in range(blocks):
            a = attn_width(block)
            d = a // HEADS
            x = layer_norm(h)
            q, k, v = (hk.Linear(a)(x).reshape(*h.shape[:-1], HEADS, d) for _ in "qkv")
            w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5)
            out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(*h.shape[:-1], a)
            h = h + hk.Linear(WIDTH)(out)
            m = jax.nn.gelu(hk.Linear(mlp_width(block))(layer_norm(h)))
            h = h + hk.Linear(WIDTH)(m)
        return hk.Linear(VOCAB)(layer_norm(h))

    def cnn(x):
        bn = {"create_scale": True, "create_offset": True, "decay_rate": 0.9}
        h = hk.Conv2D(32, 3)(x)
        h = jax.nn.relu(hk.BatchNorm(**bn, eps=1e-3)(h, is_training=True))
        h = hk.max_pool(h, 2, 2, "VALID")
        h = hk.Conv2D(64, 3)(h)
        h = jax.nn.relu(hk.BatchNorm(**bn, eps=1e-3)(h, is_training=True))
        h = hk.dropout(hk.next_rng_key(), 0.3, h.reshape(h.shape[0], -1))
        return hk.Linear(10)(h)

    def init(model, key):
        if model == "unet":
            return hk.transform(unet).init(key, jnp.ones((1, IMAGE, IMAGE, 3)))
        if model == "transformer":
            tokens = jnp.zeros((1, TOKENS), jnp.int32)
            return hk.transform(transformer).init(key, tokens)
        return hk.transform_with_state(cnn).init(key, jnp.ones((1, 8, 8, 1)))

    return init


# ----------------------------------------------------------------- equinox


def equinox_models(levels: int, blocks: int):
    import equinox as eqx
    import jax

    def convs(key, specs):
        keys = jax.random.split(key, len(specs))
        return [
            eqx.nn.Conv2d(i, o, k, padding="SAME", key=kk)
            for (i, o, k), kk in zip(specs, keys, strict=True)
        ]

    def unet_specs():
        specs, c, skips = [], 3, []
        for level in range(levels):
            for i in range(3):
                specs.append((c, enc_width(level, i), 3))
                c = enc_width(level, i)
            skips.append(c)
        for i in range(2):
            specs.append((c, bottleneck_width(levels, i), 3))
            c = bottleneck_width(levels, i)
        for level in reversed(range(levels)):
            specs.append((c, dec_width(level, 0), 2))
            c = dec_width(level, 0) + skips[level]
            for i in range(1, 4):
                specs.append((c, dec_width(level, i), 3))
                c = dec_width(level, i)
        specs.append((c, 3, 1))
        return specs

    def transformer(key):
        keys = iter(jax.random.split(key, 3 + 6 * blocks))
        lin = eqx.nn.Linear
        model = {
            "embed": eqx.nn.Embedding(VOCAB, WIDTH, key=next(keys)),
            "pos": eqx.nn.Embedding(TOKENS, WIDTH, key=next(keys)),
            "blocks": [],
            "ln_f": eqx.nn.LayerNorm(WIDTH),
            "head": lin(WIDTH, VOCAB, key=next(keys)),
        }
        for block in range(blocks):
            a, m = attn_width(block), mlp_width(block)
            model["blocks"].append(
                {
                    "ln1": eqx.nn.LayerNorm(WIDTH),
                    "q": lin(WIDTH, a, key=next(keys)),
                    "k": lin(WIDTH, a, key=next(keys)),
                    "v": lin(WIDTH, a, key=next(keys)),
                    "o": lin(a, WIDTH, key=next(keys)),
                    "ln2": eqx.nn.LayerNorm(WIDTH),
                    "mlp1": lin(WIDTH, m, key=next(keys)),
                    "mlp2": lin(m, WIDTH, key=next(keys)),
                }
            )
        return model

    class CNN(eqx.Module):
        layers: list

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            bn = {"axis_name": "batch", "momentum": 0.9, "eps": 1e-3}
            self.layers = [
                eqx.nn.Conv2d(1, 32, 3, padding=1, key=k1),
                eqx.nn.BatchNorm(32, **bn),
                eqx.nn.MaxPool2d(2, 2),
                eqx.nn.Conv2d(32, 64, 3, padding=1, key=k2),
                eqx.nn.BatchNorm(64, **bn),
                eqx.nn.Dropout(0.3),
                eqx.nn.Linear(64 * 4 * 4, 10, key=k3),
            ]

    def init(model, key):
        if model == "unet":
            return convs(key, unet_specs())
        if model == "transformer":
            return transformer(key)
        return eqx.nn.make_with_state(CNN)(key)

    return init


BUILDERS = {
    "jscope": js_models,
    "flax linen": flax_models,
    "haiku": haiku_models,
    "equinox": equinox_models,
}


# ------------------------------------------------------------- one process


def child(models: list[str], library: str, quick: bool) -> None:
    """Imports, then times one cold init per model; prints a JSON line for each.

    Only the first model's init is cold when ``models`` holds more than one
    (the quick run's way of saving process starts).
    """
    import jax
    import numpy as np

    init = BUILDERS[library](**SIZES[quick])
    # Import every module the init will need before the clock starts.
    for model in models:
        start = time.perf_counter()
        cpu = time.process_time()
        variables = init(model, jax.random.key(0))
        leaves = [
            x
            for x in jax.tree.leaves(variables)
            if isinstance(x, jax.Array | np.ndarray)
        ]
        jax.block_until_ready(leaves)
        seconds = time.perf_counter() - start
        line = {
            "model": model,
            "seconds": seconds,
            "cpu": time.process_time() - cpu,
            "sizes": sorted(int(np.size(x)) for x in leaves),
        }
        print(json.dumps(line), flush=True)


def cold_env() -> dict[str, str]:
    """The environment of a cold child: CPU, no persistent compilation cache."""
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE.parent), env.get("PYTHONPATH", "")) if p
    )
    return env


def run_child(models: list[str], library: str, quick: bool) -> dict[str, dict]:
    """Runs `child` in a fresh process; returns ``{model: result}``."""
    args = [sys.executable, __file__, "--child", ",".join(models), library]
    if quick:
        args.append("--quick")
    proc = subprocess.run(args, env=cold_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{models}/{library} failed:\n{proc.stdout}{proc.stderr}")
    results = {}
    for line in proc.stdout.strip().splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result.pop("model")] = result
    if sorted(results) != sorted(models):
        raise RuntimeError(f"{models}/{library} reported {sorted(results)}")
    for model, result in results.items():
        print(f"{model} {library}: {result['seconds']:.2f} s", file=sys.stderr)
    return results


# ------------------------------------------------------------------ driver


def check_sizes(results: dict) -> list[str]:
    """Problems: libraries whose variables differ in number or sizes."""
    problems = []
    for model in ("unet", "transformer"):
        if (model, "jscope") not in results:  # not run (--models)
            continue
        ref = results[model, "jscope"][0]["sizes"]
        for library in LIBRARIES[1:]:
            sizes = results[model, library][0]["sizes"]
            if sizes != ref:
                problems.append(
                    f"{model}: {library} makes {len(sizes)} variables of "
                    f"{sum(sizes)} values, jscope {len(ref)} of {sum(ref)}"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parallel", type=int, default=1, help="processes at once (default 1)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="the models to time (default: all three)",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "LIBRARY"))
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0].split(","), args.child[1], args.quick)
        return 0

    rounds = 1 if args.quick else args.rounds
    models = [m for m in MODELS if m in args.models]
    # One process per model and library; the quick run (a smoke test of the
    # script, whose times mean nothing) runs every model of a library in one.
    if args.quick:
        runs = [(tuple(models), lib) for lib in LIBRARIES]
    else:
        runs = [((m,), lib) for m in models for lib in LIBRARIES]
    results: dict = {(m, lib): [] for m in models for lib in LIBRARIES}
    loads = [os.getloadavg()[0]]
    rng = random.Random(0)
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for r in range(rounds):
            rng.shuffle(runs)
            done = pool.map(
                lambda run: run_child(list(run[0]), run[1], args.quick), runs
            )
            for (_, lib), by_model in zip(runs, done, strict=True):
                for model, result in by_model.items():
                    results[model, lib].append(result)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}/{rounds}, load average {loads[-1]:.1f}", flush=True)

    problems = check_sizes(results)
    for model in models:
        count = len(results[model, "jscope"][0]["sizes"])
        print(f"\n{model}: {count} variables (jscope), {rounds} rounds, cold")
        print("| model | library | median s | CPU s | jscope/library | same, CPU |")
        print("|---|---|---|---|---|---|")
        for library in LIBRARIES:
            times = [x["seconds"] for x in results[model, library]]
            cpu = [x["cpu"] for x in results[model, library]]
            pairs = list(
                zip(results[model, "jscope"], results[model, library], strict=True)
            )
            ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in pairs)
            cpu_ratio = statistics.median(a["cpu"] / b["cpu"] for a, b in pairs)
            print(
                f"| {model} | {library} | {statistics.median(times):.2f} | "
                f"{statistics.median(cpu):.2f} | {ratio:.3f} | {cpu_ratio:.3f} |"
            )
        medians = {
            lib: statistics.median(x["seconds"] for x in results[model, lib])
            for lib in LIBRARIES[1:]
        }
        fastest = min(medians, key=medians.__getitem__)
        ratio = statistics.median(
            a["seconds"] / b["seconds"]
            for a, b in zip(
                results[model, "jscope"], results[model, fastest], strict=True
            )
        )
        verdict = "(info)"
        if model != "digits":
            verdict = f"(target <= {TARGET}) {'PASS' if ratio <= TARGET else 'FAIL'}"
        print(f"RATIO cold init {model} jscope/fastest peer ({fastest}) = ", end="")
        print(f"{ratio:.3f} {verdict}")
    print(
        f"\nload average: {min(loads):.1f} to {max(loads):.1f} during the rounds; "
        f"{args.parallel} process(es) at a time"
    )
    if problems:
        print("CHECK FAILED: " + "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
