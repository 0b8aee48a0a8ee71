"""js.summary with sharding rules: a spec and a bytes-per-device column."""

import io

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jscope as js

X = jnp.ones((8, 16))


def model(x):
    with js.variable_scope("mlp"):
        up = js.get_variable("up", (x.shape[-1], 64), axes=("embed", "mlp"))
        down = js.get_variable("down", (64, x.shape[-1]), axes=("mlp", "embed"))
        scale = js.get_variable("scale", (x.shape[-1],), axes=("embed",))
    with js.variable_scope("head"):
        # A path rule shards it over both mesh axes: 8-way.
        w = js.get_variable("kernel", (x.shape[-1], 32), dtype=jnp.bfloat16)
    step = js.get_variable("step", (), jnp.int32)
    h = jax.nn.relu(x @ up) @ down * scale
    return (h @ w.astype(jnp.float32)) * step


def mesh_2x4():
    return jax.make_mesh((2, 4), ("data", "model"), (AxisType.Auto, AxisType.Auto))


def make_rules(mesh):
    return js.ShardingRules(
        mesh,
        paths=[(r"head/kernel", (None, ("data", "model")))],
        axes={"embed": None, "mlp": "model", "batch": "data"},
    )


@pytest.fixture(scope="module")
def sharded():
    rules = make_rules(mesh_2x4())
    return rules, js.summary(model, jax.random.key(0), X, rules=rules)


def test_rows_carry_the_specs_of_partition_specs(sharded):
    rules, s = sharded
    specs = js.flatten(js.partition_specs(model, jax.random.key(0), X, rules=rules))
    assert [r.spec for r in s.rows] == [
        specs[f"{r.collection}/{r.path}"] for r in s.rows
    ]
    by_path = {r.path: r.spec for r in s.rows}
    assert by_path["mlp/up"] == P(None, "model")
    assert by_path["mlp/down"] == P("model")  # trailing Nones dropped
    assert by_path["head/kernel"] == P(None, ("data", "model"))
    assert by_path["step"] == P()


def test_bytes_per_device_are_those_of_the_sharded_init(sharded):
    rules, s = sharded
    variables = js.flatten(js.init(model, jax.random.key(0), X, rules=rules))
    for r in s.rows:
        value = variables[f"{r.collection}/{r.path}"]
        shard_bytes = {shard.data.nbytes for shard in value.addressable_shards}
        assert shard_bytes == {r.device_bytes}, r.path
    expected = {
        "mlp/up": 16 * 64 * 4 // 4,
        "mlp/down": 64 * 16 * 4 // 4,
        "mlp/scale": 16 * 4,
        "head/kernel": 16 * 32 * 2 // 8,
        "step": 4,
    }
    assert {r.path: r.device_bytes for r in s.rows} == expected
    assert s.total_device_bytes == sum(expected.values())
    assert s.device_subtotals() == {
        "mlp": expected["mlp/up"] + expected["mlp/down"] + expected["mlp/scale"],
        "head": expected["head/kernel"],
        "(root)": 4,
    }
    # The unsharded columns are unchanged.
    assert s.total_bytes == (16 * 64 * 2 + 16) * 4 + 16 * 32 * 2 + 4


def test_text_markdown_and_rich_show_the_two_columns(sharded):
    _, s = sharded
    lines = str(s).splitlines()
    assert lines[0].split() == [
        "path", "shape", "dtype", "collection", "params", "bytes", "spec",
        "bytes/device",
    ]  # fmt: skip
    up = next(line for line in lines if line.startswith("mlp/up "))
    assert up.split()[-3:] == ["'model')", "1.0", "KiB"]
    assert "P(None, 'model')" in up
    assert lines[-1].split()[0] == "total"
    assert lines[-1].split()[-2:] == ["2.2", "KiB"]  # 2,244 bytes per device
    md = s.to_markdown().splitlines()
    assert md[0].endswith("| bytes | spec | bytes/device |")
    head = next(row for row in md if row.startswith("| head/kernel |"))
    assert head == (
        "| head/kernel | (16, 32) | bfloat16 | params | 512 | 1.0 KiB "
        "| P(None, ('data', 'model')) | 128 B |"
    )
    out = io.StringIO()
    from rich.console import Console

    Console(file=out, width=250).print(s)
    assert "bytes/device" in out.getvalue()
    assert "P(None, ('data', 'model'))" in out.getvalue()
    assert "per device" in repr(s)


def test_without_rules_the_table_is_unchanged():
    s = js.summary(model, jax.random.key(0), X)
    assert not s.sharded and s.mesh is None
    assert s.total_device_bytes is None and s.device_subtotals() == {}
    assert all(r.spec is None and r.device_bytes is None for r in s.rows)
    assert str(s).splitlines()[0].split() == [
        "path", "shape", "dtype", "collection", "params", "bytes",
    ]  # fmt: skip
    assert "per device" not in repr(s)


def test_shape_only_on_an_abstract_mesh():
    # Planning needs no devices: an AbstractMesh gives the same columns.
    abstract = jax.sharding.AbstractMesh(
        (2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto)
    )
    s = js.summary(model, jax.random.key(0), X, rules=make_rules(abstract))
    concrete = js.summary(model, jax.random.key(0), X, rules=make_rules(mesh_2x4()))
    assert [(r.spec, r.device_bytes) for r in s.rows] == [
        (r.spec, r.device_bytes) for r in concrete.rows
    ]


def test_a_spec_that_does_not_fit_is_a_sharding_error():
    rules = js.ShardingRules(mesh_2x4(), paths=[(r"mlp/scale", ("model",))])

    def odd(x):
        with js.variable_scope("mlp"):
            return x * js.get_variable("scale", (6,))

    with pytest.raises(js.errors.ShardingError, match="mlp/scale"):
        js.summary(odd, jax.random.key(0), jnp.ones((2, 6)), rules=rules)


def test_bytes_per_device_follow_the_mesh_axis_sizes():
    # Bytes per device follow the mesh's axis sizes: 1x8 splits "model" 8 ways.
    mesh = jax.make_mesh((1, 8), ("data", "model"), (AxisType.Auto, AxisType.Auto))
    s = js.summary(model, jax.random.key(0), X, rules=make_rules(mesh))
    by_path = {r.path: r.device_bytes for r in s.rows}
    assert by_path["mlp/up"] == 16 * 64 * 4 // 8
    assert by_path["head/kernel"] == 16 * 32 * 2 // 8
    assert by_path["mlp/scale"] == 16 * 4
