"""js.tf1: TF1 checkpoints read against TensorFlow's fixtures, written, restored.

The fixtures under ``tests/data/tf1/`` were made by TensorFlow
(``make_fixtures.py``); ``expected.npz``/``expected.json`` hold what TensorFlow
read from them. No test imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from helpers import ROOT, examples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jscope as js
from jscope._src.tf1 import bundle, protos, table

DATA = ROOT / "tests" / "data" / "tf1"
META = json.loads((DATA / "expected.json").read_text())["checkpoints"]
EXPECTED = dict(np.load(DATA / "expected.npz"))
FIXTURES = sorted(META)
DTYPE_NAMES = [
    "float16", "bfloat16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool", "complex64", "complex128",
]  # fmt: skip


def prefix(fixture: str) -> str:
    return str(DATA / META[fixture]["prefix"])


def expected(fixture: str, name: str) -> np.ndarray:
    value = EXPECTED[f"{fixture}:{name}"]
    if META[fixture]["variables"][name][1] == "bfloat16":
        return value.view(ml_dtypes.bfloat16)
    return value


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def copy_fixture(tmp_path, fixture: str) -> str:
    """A copy of a fixture's directory; the copy's prefix."""
    src = os.path.dirname(prefix(fixture))
    dst = tmp_path / fixture
    shutil.copytree(src, dst)
    return str(dst / os.path.basename(prefix(fixture)))


# ------------------------------------------------------- against TensorFlow


@pytest.mark.parametrize("fixture", FIXTURES)
def test_list_variables_is_what_tensorflow_lists(fixture):
    got = js.tf1.list_variables(prefix(fixture))
    assert [name for name, _, _ in got] == sorted(META[fixture]["variables"])
    for name, shape, dtype in got:
        want_shape, want_dtype = META[fixture]["variables"][name]
        assert shape == tuple(want_shape)
        assert dtype == (np.dtype(object) if want_dtype == "string" else want_dtype)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_load_checkpoint_is_bit_exact_with_tensorflow(fixture):
    got = js.tf1.load_checkpoint(prefix(fixture))
    numeric = {n for n, (_, d) in META[fixture]["variables"].items() if d != "string"}
    assert set(got) == numeric
    for name in numeric:
        assert_bits_equal(got[name], expected(fixture, name))


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_every_dtype_scalars_and_empty_tensors(dtype):
    path = prefix("dtypes")
    for name, shape in (
        (dtype, (3, 4)),
        (f"{dtype}_scalar", ()),
        (f"{dtype}_empty", (0, 3)),
    ):
        value = js.tf1.load_variable(path, name)
        assert value.shape == shape and value.dtype == np.dtype(
            ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
        )
        assert_bits_equal(value, expected("dtypes", name))
    assert np.unique(js.tf1.load_variable(path, dtype)).size > 1  # not all zeros


def test_sharded_checkpoint_reads_every_shard():
    path = prefix("tf1_model")
    index = bundle.read_index(path)
    assert index.num_shards == 4
    shards = {e.shard for e in index.entries.values() if not e.slices}
    assert len(shards) >= 3
    for name in index.entries:
        assert_bits_equal(js.tf1.load_variable(path, name), expected("tf1_model", name))
    assert js.tf1.load_variable(path, "global_step") == 1000


def test_partitioned_variable_is_assembled_from_its_slices():
    path = prefix("tf1_model")
    entry = bundle.read_index(path).entries["model/embedding"]
    assert entry.slices == (((0, 65), (0, 3)), ((65, 65), (0, 3)))
    value = js.tf1.load_variable(path, "model/embedding")
    assert value.shape == (130, 3)
    assert_bits_equal(value, expected("tf1_model", "model/embedding"))
    assert ("model/embedding", (130, 3), np.dtype("float32")) in js.tf1.list_variables(
        path
    )


def test_tf2_object_checkpoint_lists_and_loads_its_tensors():
    path = prefix("tf2_object")
    names = [name for name, _, _ in js.tf1.list_variables(path)]
    kernel = "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert kernel in names and bundle.OBJECT_GRAPH in names
    assert_bits_equal(
        js.tf1.load_variable(path, kernel), expected("tf2_object", kernel)
    )
    assert bundle.OBJECT_GRAPH not in js.tf1.load_checkpoint(path)


def test_string_tensors_are_a_clear_error():
    with pytest.raises(js.errors.CheckpointTypeError) as e:
        js.tf1.load_variable(prefix("tf2_object"), bundle.OBJECT_GRAPH)
    assert bundle.OBJECT_GRAPH in str(e.value) and "string" in str(e.value)
    assert "object graph" in str(e.value)
    assert isinstance(e.value, TypeError)


def test_the_check_that_tensorflow_reads_jscope_was_recorded():
    # tf_reads_jscope.txt is check_tf_reads_jscope.py's output; the checkpoint
    # it checked is still what save_checkpoint writes for those values.
    record = (DATA / "tf_reads_jscope.txt").read_text()
    assert "read 346 tensors" in record and "all equal, bit for bit" in record
    written = str(DATA / "jscope_written" / "model.ckpt-3")
    loaded = js.tf1.load_checkpoint(written)
    for name in META["dtypes"]["variables"]:
        assert_bits_equal(loaded[name], expected("dtypes", name))
    assert len(bundle.read_index(written).entries) == 346


# ------------------------------------------------------------------- paths


def test_prefix_index_data_file_and_directory_name_the_same_checkpoint():
    path = prefix("tf1_model")
    want = js.tf1.list_variables(path)
    for name in (
        path,
        path + ".index",
        path + ".data-00002-of-00004",
        os.path.dirname(path),
    ):
        assert js.tf1.list_variables(name) == want


def state_file(directory, model: str) -> None:
    text = f'model_checkpoint_path: "{model}"\nall_model_checkpoint_paths: "{model}"\n'
    (directory / "checkpoint").write_text(text)


def test_state_file_with_absolute_paths(tmp_path):
    copied = copy_fixture(tmp_path, "dtypes")
    directory = tmp_path / "dtypes"
    # The committed state, as TensorFlow wrote it, names an absolute path on
    # another machine: the checkpoint is found in the directory by its name.
    elsewhere = "/home/user/runs/dtypes/model.ckpt-7"
    assert (
        f'model_checkpoint_path: "{elsewhere}"'
        in (directory / "checkpoint").read_text()
    )
    assert not os.path.exists(elsewhere + ".index")
    assert js.tf1.load_variable(directory, "int8").shape == (3, 4)
    assert js.latest_checkpoint(directory) is None  # TF1's answer: not there
    # An absolute path that exists.
    state_file(directory, copied)
    assert js.latest_checkpoint(directory) == copied
    assert_bits_equal(
        js.tf1.load_variable(directory, "int8"), expected("dtypes", "int8")
    )


def test_state_file_with_relative_paths(tmp_path):
    copied = copy_fixture(tmp_path, "tf1_model")
    directory = tmp_path / "tf1_model"
    assert "model.ckpt-1000" in (directory / "checkpoint").read_text()
    assert js.latest_checkpoint(directory) == copied
    sub = directory / "older"
    sub.mkdir()
    for name in os.listdir(directory):
        if name.startswith("model.ckpt-1000"):
            shutil.copy(directory / name, sub / name.replace("1000", "900"))
    state_file(directory, "older/model.ckpt-900")
    assert js.latest_checkpoint(directory) == str(sub / "model.ckpt-900")
    assert js.tf1.load_variable(directory, "global_step") == 1000


def test_latest_checkpoint_of_a_tf1_state_naming_a_missing_checkpoint(tmp_path):
    # TF1's text format, not JSON: read, and None as TF1 says (no such files).
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model-1"\n')
    assert js.latest_checkpoint(tmp_path) is None


def test_js_checkpoint_readers_point_to_js_tf1():
    directory = DATA / "tf1_model"
    jax_tree = {"params": {"w": jnp.zeros(1)}}
    for read in (
        lambda: js.list_variables(directory),
        lambda: js.load_variable(prefix("tf1_model"), "global_step"),
        lambda: js.Saver().restore(prefix("tf1_model") + ".index", jax_tree),
        lambda: js.verify_checkpoint(directory),
    ):
        with pytest.raises(js.errors.CheckpointNotFoundError) as e:
            read()
        assert f"{prefix('tf1_model')} is a TF1 checkpoint" in str(e.value)
        assert "js.tf1.restore" in str(e.value)


def test_tf2_state_file_is_read_too():
    assert js.latest_checkpoint(DATA / "tf2_object") == prefix("tf2_object")


def test_paths_that_are_not_tf1_checkpoints(tmp_path):
    cases = {
        tmp_path / "nothing": "neither",
        tmp_path: "no checkpoint state file",
    }
    (tmp_path / "file.txt").write_text("x")
    cases[tmp_path / "file.txt"] = "is a file"
    for path, why in cases.items():
        with pytest.raises(js.errors.CheckpointNotFoundError) as e:
            js.tf1.list_variables(path)
        assert why in str(e.value) and "prefix" in str(e.value)
    copy_fixture(tmp_path, "tf1_model")
    with pytest.raises(js.errors.CheckpointNotFoundError, match="model.ckpt-1000"):
        js.tf1.list_variables(tmp_path / "tf1_model" / "..")  # lists what it holds
    state_file(tmp_path / "tf1_model", "model.ckpt-5")
    with pytest.raises(js.errors.CheckpointNotFoundError, match="model.ckpt-5.index"):
        js.tf1.load_checkpoint(tmp_path / "tf1_model")
    with pytest.raises(js.errors.CheckpointNotFoundError, match="None"):
        js.tf1.list_variables(None)  # type: ignore[arg-type]
    with pytest.raises(js.errors.CheckpointTypeError, match="must be a path"):
        js.tf1.list_variables(3)  # type: ignore[arg-type]


def test_a_state_file_that_is_neither_json_nor_text_format(tmp_path):
    (tmp_path / "checkpoint").write_text("model_checkpoint_path = 'x'\n")
    with pytest.raises(js.errors.CheckpointError, match="cannot be read"):
        js.latest_checkpoint(tmp_path)


def test_load_variable_of_a_missing_name():
    with pytest.raises(js.errors.CheckpointMismatchError) as e:
        js.tf1.load_variable(prefix("tf1_model"), "params/model/scale")
    assert "did you mean 'model/scale'" in str(e.value)
    assert e.value.path == "params/model/scale"


# -------------------------------------------------------------- corruption


def corrupt_at(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_data_byte_names_the_variable_and_file(tmp_path):
    path = copy_fixture(tmp_path, "tf1_model")
    entry = bundle.read_index(path).entries["model/dense/kernel"]
    data = bundle.data_path(path, entry.shard, 4)
    corrupt_at(data, entry.offset + 5)
    assert js.tf1.load_variable(path, "model/scale") == 1.0  # others still read
    for load in (
        lambda: js.tf1.load_variable(path, "model/dense/kernel"),
        lambda: js.tf1.load_checkpoint(path),
    ):
        with pytest.raises(js.errors.CheckpointCorruptError) as e:
            load()
        assert e.value.key == "model/dense/kernel" and e.value.file == data
        assert "model/dense/kernel" in str(e.value) and data in str(e.value)
        assert "CRC-32C" in str(e.value)
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is js.errors.CheckpointCorruptError
    assert (str(again), again.key, again.file) == (str(e.value), e.value.key, data)


def test_a_flipped_byte_of_a_partitioned_slice(tmp_path):
    path = copy_fixture(tmp_path, "tf1_model")
    index = bundle.read_index(path)
    part = next(iter(index.slice_entries.values()))
    corrupt_at(bundle.data_path(path, part.shard, 4), part.offset)
    with pytest.raises(js.errors.CheckpointCorruptError) as e:
        js.tf1.load_variable(path, "model/embedding")
    assert e.value.key == "model/embedding"


def test_truncated_and_missing_data_files(tmp_path):
    path = copy_fixture(tmp_path, "dtypes")
    data = bundle.data_path(path, 0, 1)
    os.truncate(data, os.path.getsize(data) - 3)
    with pytest.raises(js.errors.CheckpointCorruptError, match="ends before byte"):
        js.tf1.load_checkpoint(path)
    os.unlink(data)
    with pytest.raises(js.errors.CheckpointCorruptError, match="missing") as e:
        js.tf1.load_variable(path, "int8")
    assert e.value.file == data


def test_a_damaged_index(tmp_path):
    path = copy_fixture(tmp_path, "dtypes")
    index = path + ".index"
    with open(index, "rb") as f:
        original = f.read()
    corrupt_at(index, 20)
    with pytest.raises(js.errors.CheckpointCorruptError, match="fails its CRC") as e:
        js.tf1.list_variables(path)
    assert e.value.file == index
    with open(index, "wb") as f:
        f.write(original[:-1])
    with pytest.raises(js.errors.CheckpointCorruptError, match="magic"):
        js.tf1.list_variables(path)
    with open(index, "wb") as f:
        f.write(b"short")
    with pytest.raises(js.errors.CheckpointCorruptError, match="shorter"):
        js.tf1.list_variables(path)


def test_compressed_index_blocks_are_refused_clearly(tmp_path):
    header = protos.BundleHeaderProto(num_shards=1).SerializeToString()
    data = bytearray(table.write_table([(b"", header)]))
    # Mark the first (data) block, at offset 0, as snappy-compressed, with a
    # valid checksum: its type byte follows its contents.
    at = len(table._encode_block([(b"", header)], table.RESTART_INTERVAL))
    data[at] = 1
    data[at + 1 : at + 5] = struct.pack(
        "<I", table.masked_crc32c(bytes(data[: at + 1]))
    )
    (tmp_path / "m.index").write_bytes(bytes(data))
    with pytest.raises(js.errors.CheckpointCorruptError, match="snappy-compressed"):
        js.tf1.list_variables(tmp_path / "m")


def test_big_endian_bundles_and_newer_versions_are_refused(tmp_path):
    for header, match in (
        (protos.BundleHeaderProto(num_shards=1, endianness=1), "big-endian"),
        (
            protos.BundleHeaderProto(
                num_shards=1, version={"producer": 9, "min_consumer": 2}
            ),
            "version 2",
        ),
    ):
        blob = table.write_table([(b"", header.SerializeToString())])
        (tmp_path / "m.index").write_bytes(blob)
        with pytest.raises(js.errors.CheckpointError, match=match):
            js.tf1.list_variables(tmp_path / "m")


def test_slices_that_do_not_cover_the_variable_are_refused(tmp_path):
    header = protos.BundleHeaderProto(num_shards=1).SerializeToString()
    full = protos.BundleEntryProto(dtype=1)
    full.shape.dim.add(size=4)
    extent = full.slices.add().extent.add(start=0, length=2)
    del extent
    part = protos.BundleEntryProto(
        dtype=1, size=8, crc32c=table.masked_crc32c(bytes(8))
    )
    part.shape.dim.add(size=2)
    entries = sorted(
        [
            (b"", header),
            (b"v", full.SerializeToString()),
            (bundle.slice_key("v", [(0, 2)]), part.SerializeToString()),
        ]
    )
    (tmp_path / "m.index").write_bytes(table.write_table(entries))
    (tmp_path / "m.data-00000-of-00001").write_bytes(bytes(8))
    assert js.tf1.list_variables(tmp_path / "m") == [("v", (4,), np.dtype("float32"))]
    with pytest.raises(js.errors.CheckpointError, match="do not cover its shape"):
        js.tf1.load_variable(tmp_path / "m", "v")


# ------------------------------------------------------------------ restore


def model_tree():
    """A tree shaped like the tf1_model fixture's variables."""
    return {
        "params": {
            "model": {
                "dense": {"kernel": jnp.zeros((5, 4)), "bias": jnp.zeros(4)},
                "embedding": np.zeros((130, 3), np.float32),
                "scale": 0.0,
            }
        },
        "state": {"model": {"counts": np.zeros(4, np.int64)}},
    }


def test_restore_by_tf1_name():
    tree = model_tree()
    got = js.tf1.restore(prefix("tf1_model"), tree)
    assert list(js.flatten(got)) == list(js.flatten(tree))
    flat = js.flatten(got)
    for path, value in flat.items():
        want = expected("tf1_model", path.split("/", 1)[1])
        np.testing.assert_array_equal(np.asarray(value), want)
    assert isinstance(flat["params/model/dense/kernel"], jax.Array)
    assert isinstance(flat["params/model/embedding"], np.ndarray)
    assert type(flat["params/model/scale"]) is float and flat["params/model/scale"] == 1
    assert float(js.flatten(tree)["params/model/dense/kernel"].sum()) == 0  # unchanged


def test_restore_into_shape_dtype_structs():
    tree = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), model_tree()
    )
    del tree["state"]  # int64 needs x64; the params suffice here
    got = js.flatten(js.tf1.restore(DATA / "tf1_model", tree))
    np.testing.assert_array_equal(
        got["params/model/dense/kernel"], expected("tf1_model", "model/dense/kernel")
    )


def test_restore_with_a_dict_and_a_callable_name_map():
    want = expected("tf1_model", "model/dense/kernel")
    tree = {"params": {"encoder": {"w": jnp.zeros((5, 4))}, "other": jnp.ones(2)}}
    by_dict = js.tf1.restore(
        prefix("tf1_model"),
        tree,
        name_map={"encoder/w": "model/dense/kernel", "other": None},
    )
    by_call = js.tf1.restore(
        prefix("tf1_model"),
        tree,
        name_map=lambda p: None if p == "other" else "model/dense/kernel",
    )
    for got in (by_dict, by_call):
        np.testing.assert_array_equal(got["params"]["encoder"]["w"], want)
        assert got["params"]["other"] is tree["params"]["other"]  # left out: kept


def test_one_error_lists_every_missing_and_mismatched_variable():
    tree = model_tree()
    tree["params"]["model"]["dense"]["kernel"] = jnp.zeros((4, 5))
    tree["params"]["model"]["embedding"] = np.zeros((130, 3), np.float16)
    tree["params"]["extra"] = jnp.zeros(2)
    tree["params"]["model"]["gone"] = jnp.zeros(2)
    with pytest.raises(js.errors.CheckpointMismatchError) as e:
        js.tf1.restore(prefix("tf1_model"), tree)
    text = str(e.value)
    assert "2 missing and 2 mismatched" in text
    for part in (
        "params/extra",
        "params/model/gone",
        "params/model/dense/kernel: expected shape (4, 5) (the tree's), found shape "
        "(5, 4)",
        "params/model/embedding: expected dtype float16 (the tree's), found dtype "
        "float32",
        "name_map",
        "strict=False",
    ):
        assert part in text, part
    assert e.value.path == "params/model/dense/kernel"
    # Not strict: the missing ones are kept; the mismatched are still errors.
    with pytest.raises(js.errors.CheckpointMismatchError) as e:
        js.tf1.restore(prefix("tf1_model"), tree, strict=False)
    assert "0 missing and 2 mismatched" in str(e.value)
    tree = model_tree()
    tree["params"]["extra"] = jnp.ones(2)
    got = js.tf1.restore(prefix("tf1_model"), tree, strict=False)
    assert got["params"]["extra"] is tree["params"]["extra"]
    assert got["params"]["model"]["scale"] == 1.0


def test_restore_names_the_tf1_name_when_mapped():
    with pytest.raises(js.errors.CheckpointMismatchError) as e:
        js.tf1.restore(
            prefix("tf1_model"),
            {"params": {"w": jnp.zeros(3)}},
            name_map={"w": "model/missing"},
        )
    assert "params/w (TF1 name 'model/missing')" in str(e.value)


def test_bad_name_maps_and_leaves():
    tree = {"params": {"w": jnp.zeros(3)}}
    with pytest.raises(js.errors.CheckpointTypeError, match="dict or a callable"):
        js.tf1.restore(prefix("tf1_model"), tree, name_map=["w"])  # type: ignore[arg-type]
    with pytest.raises(js.errors.CheckpointTypeError, match="must give a TF1 name"):
        js.tf1.restore(prefix("tf1_model"), tree, name_map=lambda p: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(js.errors.CheckpointTypeError, match="is a str"):
        js.tf1.restore(prefix("tf1_model"), {"params": {"model": {"scale": "x"}}})


# --------------------------------------------------------------------- save


_DTYPES = [np.dtype(ml_dtypes.bfloat16 if d == "bfloat16" else d) for d in DTYPE_NAMES]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    raw = draw(hnp.arrays(np.uint8, (int(np.prod(shape)) * dtype.itemsize,)))
    value = raw.view(dtype).reshape(shape)  # any bits: NaN payloads, -0.0
    if dtype == np.bool_:
        value = value.view(np.uint8).astype(bool)
    return value


@settings(max_examples=examples(2), deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,6}(/[a-z0-9_]{1,6}){0,2}", fullmatch=True),
        arrays(),
        min_size=1,
        max_size=6,
    )
)
def test_save_then_load_is_bit_exact(tmp_path_factory, named):
    named = {
        k: v for k, v in named.items() if not any(o.startswith(k + "/") for o in named)
    }
    path = str(tmp_path_factory.mktemp("rt") / "model.ckpt-1")
    assert js.tf1.save_checkpoint({"params": named}, path, name_map=lambda p: p) == path
    loaded = js.tf1.load_checkpoint(path)
    assert sorted(loaded) == sorted(named)
    for name, value in named.items():
        assert_bits_equal(loaded[name], value)
    assert [(n, s) for n, s, _ in js.tf1.list_variables(path)] == sorted(
        (n, v.shape) for n, v in named.items()
    )


def test_save_writes_tf1_names_and_restores_into_the_same_tree(tmp_path):
    tree = {
        "params": {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3)}},
        "state": {"step": np.int32(4), "big": np.arange(3, dtype=">i8")},
    }
    path = js.tf1.save_checkpoint(tree, tmp_path / "sub" / "model.ckpt-4")
    assert path == str(tmp_path / "sub" / "model.ckpt-4")
    assert sorted(os.listdir(tmp_path / "sub")) == [
        "model.ckpt-4.data-00000-of-00001",
        "model.ckpt-4.index",
    ]
    assert [n for n, _, _ in js.tf1.list_variables(path)] == [
        "big",
        "dense/kernel",
        "step",
    ]
    assert js.tf1.load_variable(path, "big").tolist() == [0, 1, 2]  # byte order fixed
    zeros = jax.tree.map(lambda x: x * 0, tree)
    zeros["state"]["big"] = np.zeros(3, np.int64)
    got = js.tf1.restore(path, zeros)
    np.testing.assert_array_equal(
        got["params"]["dense"]["kernel"], np.arange(6.0).reshape(2, 3)
    )
    assert got["state"]["step"] == 4 and got["state"]["step"].dtype == np.int32
    # Saving again over the same prefix replaces both files.
    js.tf1.save_checkpoint({"params": {"only": np.ones(1)}}, path)
    assert js.tf1.load_checkpoint(path) == {"only": np.ones(1)}


def test_save_restores_prng_keys_by_their_data_and_refuses_raw_keys(tmp_path):
    key = jax.random.key(3)
    with pytest.raises(js.errors.CheckpointTypeError, match="key_data"):
        js.tf1.save_checkpoint({"state": {"rng": key}}, tmp_path / "m")
    path = js.tf1.save_checkpoint(
        {"state": {"rng": jax.random.key_data(key)}}, tmp_path / "m"
    )
    got = js.tf1.restore(path, {"state": {"rng": jax.random.key(0)}})
    assert jnp.array_equal(
        jax.random.key_data(got["state"]["rng"]), jax.random.key_data(key)
    )


def test_save_errors(tmp_path):
    cases = [
        (
            {"params": {"s": np.array(["a"])}},
            js.errors.CheckpointTypeError,
            "dtype <U1",
        ),
        (
            {"params": {"f8": np.zeros(2, ml_dtypes.float8_e4m3fn)}},
            js.errors.CheckpointTypeError,
            "float8_e4m3fn",
        ),
        (
            {"params": {"a": np.zeros(1)}, "state": {"a": np.zeros(1)}},
            js.errors.CheckpointError,
            "params/a and state/a both map",
        ),
    ]
    for tree, kind, match in cases:
        with pytest.raises(kind, match=match):
            js.tf1.save_checkpoint(tree, tmp_path / "m")
    with pytest.raises(js.errors.CheckpointTypeError, match="is a directory"):
        js.tf1.save_checkpoint({"params": {"a": np.zeros(1)}}, tmp_path)
    with pytest.raises(js.errors.CheckpointTypeError, match="traced value"):
        jax.jit(lambda x: js.tf1.save_checkpoint({"params": {"a": x}}, tmp_path / "j"))(
            jnp.zeros(1)
        )
    with pytest.raises(js.errors.CheckpointTypeError, match="non-empty name"):
        js.tf1.save_checkpoint(
            {"params": {"a": np.zeros(1)}}, tmp_path / "m", name_map={"a": ""}
        )
    assert not any(n.startswith("m") for n in os.listdir(tmp_path))  # nothing written


def test_save_into_an_unwritable_place_is_a_write_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(js.errors.CheckpointError) as e:
        js.tf1.save_checkpoint({"params": {"a": np.zeros(1)}}, blocker / "m")
    assert isinstance(e.value, js.errors.CheckpointWriteError)
    assert "m" in str(e.value) and e.value.errno is not None
