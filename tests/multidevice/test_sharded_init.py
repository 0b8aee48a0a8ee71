"""Sharded init on 8 CPU devices (DESIGN §8): rules, specs, placement, errors.

`js.init(..., rules=rules)` must give, for every variable, the values of the
unsharded `js.init` bit for bit, laid out as `NamedSharding(mesh, spec)` with the
spec `js.partition_specs` plans; compiled, it must hold about 1/N of the model
per device for a model axis of N.
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jscope as js
from jscope import errors
from jscope._src import jax_compat
from jscope._src.meshes import (  # as js.init lowers and compiles it
    compile_sharded_init,
    lower_sharded_init,
)
from jscope._src.run import sharded_init_fn  # the jitted init js.init runs

KEY = jax.random.key(0)
INIT = js.initializers


def explicit_mesh():
    return jax.make_mesh((2, 4), ("data", "model"))


def auto_mesh():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


MESHES = {"explicit": explicit_mesh, "auto": auto_mesh}


def assert_bits_equal(a, b, where):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, where
    assert a.tobytes() == b.tobytes(), f"{where}: values differ"


def check_sharded_init(fn, rules, *args, **kwargs):
    """Sharded init == unsharded init bit for bit, each leaf as planned."""
    sharded = js.init(fn, KEY, *args, rules=rules, **kwargs)
    plain = js.init(fn, KEY, *args, **kwargs)
    specs = js.partition_specs(fn, KEY, *args, rules=rules, **kwargs)
    flat, flat_plain, flat_specs = (
        js.flatten(sharded),
        js.flatten(plain),
        js.flatten(specs),
    )
    assert list(flat) == list(flat_plain) == list(flat_specs)  # creation order
    for path, value in flat.items():
        assert_bits_equal(value, flat_plain[path], path)
        expected = NamedSharding(rules.mesh, flat_specs[path])
        assert value.sharding == expected, (path, value.sharding, expected)
    assert js.shardings(sharded, rules) == js.shardings(specs, rules)
    return sharded, flat_specs


# ------------------------------------------------------------------ rule kinds

INITIALIZERS = {
    "default": None,
    "glorot_normal": INIT.glorot_normal(),
    "truncated_normal": INIT.truncated_normal(0.5, 0.02),
    "random_normal": INIT.random_normal(0.1, 0.02),
    "random_uniform": INIT.random_uniform(-0.3, 0.7),
    "he": INIT.variance_scaling(2.0, "fan_in", "untruncated_normal"),
    "orthogonal": INIT.orthogonal(),
    "lecun_jax": jax.nn.initializers.lecun_normal(),
    "constant": INIT.constant(0.25),
}


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_every_initializer_gives_the_unsharded_bits_in_its_shards(mesh):
    rules = js.ShardingRules(
        MESHES[mesh](),
        paths=[(r"^p/", ("data", "model"))],
        axes={"embed": None, "mlp": "model", "rows": "data"},
    )

    def fn():
        for name, init in INITIALIZERS.items():
            with js.variable_scope("p"):  # by path rule
                js.get_variable(name, (16, 32), initializer=init)
            with js.variable_scope("a"):  # by logical axes
                js.get_variable(name, (16, 32), initializer=init, axes=("embed", "mlp"))
            with js.variable_scope("r"):  # replicated
                js.get_variable(name, (6, 10), initializer=init)
        js.get_variable("bf16", (8, 64), jnp.bfloat16, axes=("rows", "mlp"))
        js.get_variable("steps", (), jnp.int32, INIT.zeros(), trainable=False)
        js.get_variable(
            "table",
            initializer=np.arange(12.0, dtype=np.float32).reshape(3, 4),
            axes=(None, "mlp"),
        )
        js.Variable(
            lambda key: jax.random.normal(key, (8, 4)), name="v", axes=("rows", "mlp")
        )
        js.Variable(jnp.ones(4), name="c", axes=("mlp",))

    _, specs = check_sharded_init(fn, rules)
    assert specs["params/p/random_normal"] == P("data", "model")
    assert specs["params/a/orthogonal"] == P(None, "model")
    assert specs["params/r/constant"] == P()
    assert specs["params/bf16"] == P("data", "model")
    assert specs["state/steps"] == P()
    assert specs["params/v"] == P("data", "model")
    assert specs["params/c"] == P("model")


def test_precedence_path_rule_then_logical_axes_then_replicated():
    rules = js.ShardingRules(
        explicit_mesh(),
        paths=[(r"attn/.*kernel$", ("model", None))],
        axes={"embed": "data", "mlp": "model"},
    )

    def fn():
        with js.variable_scope("attn/q"):
            js.get_variable("kernel", (8, 8), axes=("embed", "mlp"))  # path wins
        with js.variable_scope("mlp"):
            js.get_variable("kernel", (8, 8), axes=("embed", "mlp"))  # axes
            js.get_variable("scale", (8,))  # replicated

    _, specs = check_sharded_init(fn, rules)
    assert specs == {
        "params/attn/q/kernel": P("model"),
        "params/mlp/kernel": P("data", "model"),
        "params/mlp/scale": P(),
    }


def test_a_tuple_of_mesh_axes_shards_over_all_eight_devices():
    rules = js.ShardingRules(explicit_mesh(), axes={"vocab": ("data", "model")})
    sharded, specs = check_sharded_init(
        lambda: js.get_variable("emb", (64, 4), axes=("vocab", None)), rules
    )
    assert specs["params/emb"] == P(("data", "model"))
    shards = sharded["params"]["emb"].addressable_shards
    assert {s.data.shape for s in shards} == {(8, 4)}


def stack(h, depth=3, axis_name="layers", variable_axes=None):
    def block(h, _):
        w = js.get_variable("w", (16, 16), axes=("embed", "mlp"))
        js.get_variable("b", (16,), initializer=INIT.random_normal(), axes=("mlp",))
        with js.variable_scope("attn"):
            js.get_variable("kernel", (16, 32))
        return jnp.tanh(h @ w), None

    scan = js.scan(
        block,
        variable_axes=variable_axes or {"params": 0},
        length=depth,
        axis_name=axis_name,
    )
    return scan(h)[0]


def test_a_scan_stack_names_its_dimension_and_path_rules_see_the_stack():
    rules = js.ShardingRules(
        explicit_mesh(),
        paths=[(r"attn/kernel$", (None, None, "model"))],
        axes={"layers": None, "embed": None, "mlp": "model"},
    )
    _, specs = check_sharded_init(stack, rules, jnp.ones((4, 16)))
    assert specs == {
        "params/w": P(None, None, "model"),
        "params/b": P(None, "model"),
        "params/attn/kernel": P(None, None, "model"),
    }


def test_the_stacked_dimension_can_be_sharded():
    rules = js.ShardingRules(
        explicit_mesh(), axes={"layers": "data", "embed": None, "mlp": "model"}
    )
    _, specs = check_sharded_init(lambda h: stack(h, depth=4), rules, jnp.ones((4, 16)))
    assert specs["params/w"] == P("data", None, "model")
    assert specs["params/attn/kernel"] == P("data")  # the stack dimension only


def test_an_unnamed_stack_dimension_is_replicated():
    rules = js.ShardingRules(explicit_mesh(), axes={"embed": None, "mlp": "model"})
    _, specs = check_sharded_init(
        lambda h: stack(h, axis_name=None), rules, jnp.ones((4, 16))
    )
    assert specs["params/w"] == P(None, None, "model")


def test_nested_scans_and_a_vmap_ensemble():
    rules = js.ShardingRules(
        explicit_mesh(),
        axes={"outer": None, "layers": "data", "embed": None, "mlp": "model",
              "members": "data"},
    )  # fmt: skip

    def nested(h):
        def outer(h, _):
            return stack(h, depth=2), None

        h = js.scan(outer, variable_axes={"params": 0}, length=2, axis_name="outer")(h)[
            0
        ]

        def member(x):
            return x @ js.get_variable("head", (16, 8), axes=("embed", "mlp"))

        ens = js.vmap(
            member, {"params": 0}, in_axes=None, axis_size=2, axis_name="members"
        )
        return ens(h)

    _, specs = check_sharded_init(nested, rules, jnp.ones((4, 16)))
    assert specs["params/w"] == P(None, "data", None, "model")
    assert specs["params/b"] == P(None, "data", "model")
    assert specs["params/head"] == P("data", None, "model")


# ---------------------------------------------------------------- arguments


def test_array_and_non_array_arguments_and_the_output():
    rules = js.ShardingRules(explicit_mesh(), axes={"embed": None, "mlp": "model"})
    seen = []

    def fn(x, width, *, act="tanh", table=None):
        seen.append((type(width), act, type(table)))
        w = js.get_variable("w", (x.shape[-1], width), axes=("embed", "mlp"))
        y = getattr(jnp, act)(x @ w) + table.sum()
        return {"y": y}

    x, table = jnp.ones((2, 8)), np.ones(3)
    check_sharded_init(fn, rules, x, 16, act="sin", table=table)
    out, v = js.init_with_output(fn, KEY, x, 16, act="sin", table=table, rules=rules)
    want, _ = js.init_with_output(fn, KEY, x, 16, act="sin", table=table)
    np.testing.assert_allclose(out["y"], want["y"], rtol=1e-6)
    # int, str and NumPy arguments reach fn as themselves, not as tracers
    assert set(seen) == {(int, "sin", np.ndarray)}
    assert v["params"]["w"].sharding.spec == P(None, "model")


def test_the_sharded_init_traces_fn_once_into_one_program():
    # The jit with out_shardings reuses the trace that found the specs (fn runs
    # once), and its program is the unsharded init's, with no call nested around it.
    rules = js.ShardingRules(auto_mesh(), axes={"embed": None, "mlp": "model"})
    runs = []

    def fn(x):
        runs.append(x.shape)
        return x @ js.get_variable("w", (x.shape[-1], 16), axes=("embed", "mlp"))

    x = jnp.ones((2, 8))
    js.init(fn, KEY, x, rules=rules)
    assert runs == [(2, 8)]
    jitted, arrays, _ = sharded_init_fn(fn, KEY, (x,), {}, rules, with_output=False)
    sharded = lower_sharded_init(jitted, arrays).as_text()
    plain = (
        jax.jit(lambda k, x: js.init(fn, k, x))
        .trace(KEY, x)
        .lower(**jax_compat.unrolled_threefry_lowering())
        .as_text()
    )
    assert sharded.count("func.func") == plain.count("func.func")


def test_a_sharded_init_and_a_plain_jit_compile_in_two_threads():
    # The sharded init lowers threefry unrolled by a parameter of its own
    # lowering: a jit lowered meanwhile in another thread keeps JAX's CPU rule
    # (a rolled loop), and both give their values.
    rules = js.ShardingRules(auto_mesh(), axes={"embed": None, "mlp": "model"})
    fn = lambda: js.get_variable("w", (64, 32), axes=("embed", "mlp"))  # noqa: E731
    want_w = js.init(fn, KEY)["params"]["w"]
    want_n = np.asarray(jax.random.bits(KEY, (256,)))
    start = threading.Barrier(2)
    got: dict[str, list] = {"w": [], "n": [], "text": [], "failed": []}

    def sharded():
        start.wait()
        for _ in range(3):
            got["w"].append(js.init(fn, KEY, rules=rules)["params"]["w"])

    def plain():
        start.wait()
        for i in range(6):
            draw = lambda k, i=i: jax.random.bits(k, (256,)) + i  # noqa: E731
            lowered = jax.jit(draw).lower(KEY)
            got["text"].append(lowered.as_text())
            got["n"].append((i, lowered.compile()(KEY)))

    def run(target):
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - reported below
            got["failed"].append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in (sharded, plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not got["failed"], got["failed"]
    assert len(got["w"]) == 3 and len(got["n"]) == 6
    for w in got["w"]:
        assert_bits_equal(w, want_w, "w")
        assert w.sharding.spec == P(None, "model")
    for i, n in got["n"]:
        np.testing.assert_array_equal(np.asarray(n), want_n + np.uint32(i))
    assert all("stablehlo.while" in text for text in got["text"])
    jitted, arrays, _ = sharded_init_fn(fn, KEY, (), {}, rules, with_output=False)
    assert "stablehlo.while" not in lower_sharded_init(jitted, arrays).as_text()


def test_init_inside_jit_and_under_set_mesh():
    mesh = explicit_mesh()
    rules = js.ShardingRules(mesh, axes={"embed": None, "mlp": "model"})
    fn = lambda: js.get_variable("w", (8, 16), axes=("embed", "mlp"))  # noqa: E731
    plain = js.init(fn, KEY)["params"]["w"]
    with jax.set_mesh(mesh):
        inside = js.init(fn, KEY, rules=rules)["params"]["w"]
    jitted = jax.jit(lambda k: js.init(fn, k, rules=rules))(KEY)["params"]["w"]
    for got in (inside, jitted):
        assert_bits_equal(got, plain, "w")
        assert got.sharding.spec == P(None, "model")


def test_a_dict_of_rngs_and_next_rng_key():
    rules = js.ShardingRules(explicit_mesh(), axes={"mlp": "model"})

    def fn():
        noise = jax.random.normal(js.next_rng_key("noise"), (8,))
        return js.get_variable("w", initializer=noise, axes=("mlp",))

    rngs = {"params": KEY, "noise": jax.random.key(7)}
    sharded = js.init(fn, rngs, rules=rules)["params"]["w"]
    assert_bits_equal(sharded, js.init(fn, rngs)["params"]["w"], "w")
    assert sharded.sharding.spec == P("model")


# -------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "shape, model, types",
    [((1, 8), 8, AxisType.Auto), ((2, 4), 4, AxisType.Auto),
     ((2, 4), 4, AxisType.Explicit)],
)  # fmt: skip
def test_compiled_sharded_init_holds_one_nth_per_device(shape, model, types):
    mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(types,) * 2)
    rules = js.ShardingRules(
        mesh,
        paths=[(r"attn/.*/kernel$", (None, None, "model"))],
        axes={"layers": None, "embed": None, "mlp": "model", "vocab": "model"},
    )
    d = 256

    def fn():
        js.get_variable("emb", (1024, d), axes=("vocab", "embed"))

        def block(c, _):
            for name in ("q", "k", "v"):
                with js.variable_scope(f"attn/{name}"):
                    js.get_variable("kernel", (d, d))
            js.get_variable("up", (d, 4 * d), axes=("embed", "mlp"))
            js.get_variable("down", (4 * d, d), axes=("mlp", "embed"))
            return c, None

        js.scan(block, variable_axes={"params": 0}, length=4, axis_name="layers")(
            0.0, None
        )

    jitted, arrays, _ = sharded_init_fn(fn, KEY, (), {}, rules, with_output=False)
    memory = compile_sharded_init(jitted, arrays).memory_analysis()
    shapes = jax.eval_shape(lambda: js.init(fn, KEY))
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    assert 0.9 <= memory.output_size_in_bytes / (whole / model) <= 1.1
    # the peak too: the random bits go straight into the shards (no temporaries
    # the size of a layer's draws), so a device never holds more than its 1/N
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    assert peak / (whole / model) <= 1.1
    unsharded = jax.jit(lambda k: js.init(fn, k)).lower(KEY).compile()
    assert unsharded.memory_analysis().output_size_in_bytes >= whole


# -------------------------------------------------------------------- errors


def init_error(fn, rules, *args):
    for run in (
        lambda: js.init(fn, KEY, *args, rules=rules),
        lambda: js.partition_specs(fn, KEY, *args, rules=rules),
    ):
        with pytest.raises(errors.ShardingError) as e:
            run()
    return e.value


MESH_TEXT = "{'data': 2, 'model': 4}"


def test_rank_mismatch_of_a_path_rule_on_a_stack():
    rules = js.ShardingRules(
        explicit_mesh(), paths=[(r"attn/kernel$", (None, "model"))]
    )
    e = init_error(stack, rules, jnp.ones((4, 16)))
    assert e.path == "attn/kernel"
    for word in ("attn/kernel", "(3, 16, 32)", "P(None, 'model')", "rank 3", MESH_TEXT):
        assert word in str(e)


def test_a_dimension_the_mesh_axis_does_not_divide():
    rules = js.ShardingRules(explicit_mesh(), axes={"mlp": "model"})
    e = init_error(lambda: js.get_variable("n/w", (3, 6), axes=(None, "mlp")), rules)
    assert e.path == "n/w"
    for word in (
        "n/w",
        "(3, 6)",
        "P(None, 'model')",
        "dimension 1 (size 6)",
        MESH_TEXT,
    ):
        assert word in str(e)


def test_an_unknown_logical_axis():
    rules = js.ShardingRules(explicit_mesh(), axes={"mlp": "model"})
    e = init_error(lambda: js.get_variable("w", (4, 8), axes=("embd", "mlp")), rules)
    assert "'embd'" in str(e) and e.path == "w" and MESH_TEXT in str(e)


def test_one_mesh_axis_twice_through_logical_axes():
    rules = js.ShardingRules(explicit_mesh(), axes={"heads": "model", "mlp": "model"})
    e = init_error(lambda: js.get_variable("w", (4, 8), axes=("heads", "mlp")), rules)
    assert "'model' twice" in str(e) and e.path == "w"


def test_an_unknown_mesh_axis_and_a_bad_regex_at_construction():
    with pytest.raises(errors.ShardingError, match="'tensor'"):
        js.ShardingRules(explicit_mesh(), paths=[("w$", ("tensor",))])
    with pytest.raises(errors.ShardingError, match=r"regex of paths rule '\[w'"):
        js.ShardingRules(explicit_mesh(), paths=[("[w", ())])


def test_init_needs_a_concrete_mesh_and_rules():
    abstract = js.ShardingRules(jax.sharding.AbstractMesh((2, 4), ("data", "model")))
    with pytest.raises(errors.ShardingError, match="js.partition_specs"):
        js.init(lambda: js.get_variable("w", (2,)), KEY, rules=abstract)
    with pytest.raises(errors.ArgumentTypeError, match="js.ShardingRules"):
        js.init(lambda: None, KEY, rules={"w": P()})


def test_unused_path_rules_are_reported():
    rules = js.ShardingRules(
        explicit_mesh(),
        paths=[(r"attn/kernel$", (None, None, "model")), (r"atn/kernel$", ()),
               (r"kernel$", ())],
    )  # fmt: skip
    specs = js.partition_specs(stack, KEY, jnp.ones((4, 16)), rules=rules)
    assert rules.unused(specs) == [r"atn/kernel$", r"kernel$"]


# ------------------------------------------------------------- constrain, apply


def test_constrain_applies_under_rules_and_is_identity_without():
    mesh = explicit_mesh()
    rules = js.ShardingRules(
        mesh, axes={"batch": "data", "embed": None, "mlp": "model"}
    )

    def fn(x):
        w = js.get_variable("w", (8, 16), axes=("embed", "mlp"))
        return js.constrain(x @ w, ("batch", "mlp"))

    x = jnp.ones((4, 8))
    v = js.init(fn, KEY, x, rules=rules)
    out = jax.jit(lambda v, x: js.apply(fn, v, x, rules=rules))(v, x)
    assert out.sharding == NamedSharding(mesh, P("data", "model"))
    plain = js.apply(fn, js.init(fn, KEY, x), x)
    np.testing.assert_allclose(out, plain, rtol=1e-6)
    y = jnp.ones((3,))
    assert js.constrain(y, ("anything",)) is y  # outside any run
    assert js.apply(lambda: js.constrain(y, ("batch",)), {}) is y  # no rules


def test_constrain_refuses_names_that_do_not_fit():
    rules = js.ShardingRules(explicit_mesh(), axes={"batch": "data"})
    x = jnp.ones((3, 4))
    with pytest.raises(errors.ShardingError, match=r"\(3, 4\).*divisible by 2"):
        js.apply(lambda: js.constrain(x, ("batch", None)), {}, rules=rules)
    with pytest.raises(errors.ShardingError, match="one name"):
        js.apply(lambda: js.constrain(x, ("batch",)), {}, rules=rules)
    with pytest.raises(errors.ShardingError, match="'heads'"):
        js.apply(lambda: js.constrain(x, (None, "heads")), {}, rules=rules)
