"""Checkpoints: js.Saver, latest_checkpoint, list_variables, load_variable."""

import copy
import functools
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import assert_trees_equal, run_source

import jscope as js
from jscope import errors

# ---------------------------------------------------------------- helpers


def model():
    with js.variable_scope("n2"):
        js.get_variable("W", [4, 3])
        js.get_variable("b", [3], dtype=jnp.bfloat16)
    js.Variable(0, name="counter")


def init(seed=0):
    return js.init(model, jax.random.key(seed))


def offset(tree, amount):
    """A tree of the same shapes and dtypes with other values."""
    return jax.tree.map(lambda x: (x + amount).astype(x.dtype), tree)


# Orbax hands back dicts with sorted keys.
assert_tree_equal = functools.partial(assert_trees_equal, ordered=False)


def read_state(directory):
    with open(os.path.join(directory, "checkpoint"), encoding="utf-8") as f:
        return json.load(f)


def listdir(directory):
    """The entries of a directory, less the writers' lock file."""
    return sorted(n for n in os.listdir(directory) if n != ".checkpoint.lock")


# ----------------------------------------------------------- construction


@pytest.mark.parametrize(
    "var_list, duplicate",
    [
        (["params/n2/W", "state/counter", "params/n2/W"], "params/n2/W"),
        ({"a": "state/counter", "b": "state/counter"}, "state/counter"),
    ],
)
def test_saver_rejects_duplicates_at_construction(var_list, duplicate):
    with pytest.raises(js.CheckpointError, match=f"same name.*{duplicate}"):
        js.Saver(var_list)


def test_saver_dict_duplicate_names_both_keys():
    with pytest.raises(ValueError, match=r"state/counter under keys 'a', 'b'"):
        js.Saver({"a": "state/counter", "b": "state/counter", "c": "params/w"})


@pytest.mark.parametrize("var_list", [[], {}, ()])
def test_saver_empty_var_list(var_list):
    with pytest.raises(ValueError, match="No variables to save"):
        js.Saver(var_list)
    saver = js.Saver(var_list, allow_empty=True)
    assert saver.last_checkpoints == []


@pytest.mark.parametrize(
    "var_list", ["params/w", 3, {"a": 3}, {1: "params/w"}, ["params/w", None]]
)
def test_saver_rejects_wrong_types(var_list):
    with pytest.raises(TypeError) as info:
        js.Saver(var_list)
    assert isinstance(info.value, js.CheckpointTypeError)


@pytest.mark.parametrize("max_to_keep", [-1, 1.5, "5", True])
def test_saver_rejects_bad_max_to_keep(max_to_keep):
    with pytest.raises(ValueError, match="max_to_keep"):
        js.Saver(max_to_keep=max_to_keep)


def test_saver_accepts_variable_handles(tmp_path):
    def fn():
        js.get_variable("w", [2])
        return js.Variable(7, name="counter")

    handle, variables = js.init_with_output(fn, jax.random.key(0))
    saver = js.Saver({"my_counter": handle})
    path = saver.save(variables, tmp_path / "model")
    assert js.list_variables(path) == [("my_counter", ())]
    assert int(js.load_variable(path, "my_counter")) == 7
    assert js.list_variables(js.Saver([handle]).save(variables, tmp_path / "m2")) == [
        ("state/counter", ())
    ]


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (js.CheckpointError, ValueError),
        (js.CheckpointNotFoundError, ValueError),
        (js.CheckpointMismatchError, ValueError),
        (js.CheckpointTypeError, TypeError),
    ],
)
def test_error_classes_are_tf1_builtins_and_pickle(cls, builtin):
    assert issubclass(cls, errors.JscopeError) and issubclass(cls, builtin)
    e = cls("Variable params/w does not match", "params/w")
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is cls and str(again) == str(e) and again.path == "params/w"


# ------------------------------------------------------------------- save


def test_save_returns_path_creates_directories_and_records_state(tmp_path):
    variables = init()
    saver = js.Saver()
    prefix = tmp_path / "a" / "b" / "model"
    assert saver.save(variables, prefix) == str(prefix)
    assert saver.save(variables, str(prefix), global_step=10) == f"{prefix}-10"
    step = jnp.array(11, jnp.int32)  # an integer scalar array is a step too
    assert saver.save(variables, prefix, global_step=step) == f"{prefix}-11"
    directory = tmp_path / "a" / "b"
    assert listdir(directory) == ["checkpoint", "model", "model-10", "model-11"]
    state = read_state(directory)
    assert state["model_checkpoint_path"] == "model-11"
    assert state["all_model_checkpoint_paths"] == ["model", "model-10", "model-11"]
    stamps = state["all_model_checkpoint_timestamps"]
    assert stamps == sorted(stamps) and len(stamps) == 3
    assert saver.last_checkpoints == [str(prefix), f"{prefix}-10", f"{prefix}-11"]
    assert js.latest_checkpoint(directory) == os.path.join(directory, "model-11")
    assert js.latest_checkpoint(str(directory)) == f"{prefix}-11"


def test_save_leaves_the_tree_unchanged(tmp_path):
    variables = init()
    before = copy.deepcopy(variables)
    js.Saver().save(variables, tmp_path / "model")
    assert_tree_equal(variables, before)


def test_pad_step_number(tmp_path):
    path = js.Saver(pad_step_number=True).save(init(), tmp_path / "m", global_step=42)
    assert path == str(tmp_path / "m-00000042")


@pytest.mark.parametrize("step", [True, 1.0, jnp.array([1, 2]), jnp.array(1.0), "3"])
def test_save_rejects_non_integer_steps(tmp_path, step):
    with pytest.raises(TypeError, match="global_step must be an integer"):
        js.Saver().save(init(), tmp_path / "m", global_step=step)
    assert not os.path.exists(tmp_path / "m") and listdir(tmp_path) == []


def test_save_names_every_missing_variable(tmp_path):
    saver = js.Saver(["params/n2/W", "counter", "params/n9/x"])
    with pytest.raises(js.CheckpointError) as info:
        saver.save(init(), tmp_path / "m")
    message = str(info.value)
    assert "not in the tree" in message
    assert "counter (did you mean 'state/counter'?" in message
    assert "params/n9/x" in message and "params/n2/W" not in message
    assert listdir(tmp_path) == []


def test_save_of_an_empty_tree(tmp_path):
    with pytest.raises(ValueError, match="No variables to save"):
        js.Saver().save({}, tmp_path / "m")
    assert js.Saver(allow_empty=True).save({}, tmp_path / "m") is None
    assert listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["checkpoint", ""])
def test_save_path_must_name_a_checkpoint(tmp_path, name):
    with pytest.raises(js.CheckpointError, match="must name a checkpoint"):
        js.Saver().save(init(), os.path.join(tmp_path, name))


def test_save_never_overwrites_something_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    with pytest.raises(js.CheckpointError, match="exists and is not a checkpoint"):
        js.Saver().save(init(), tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"


def test_save_rejects_traced_values(tmp_path):
    saver = js.Saver()

    @jax.jit
    def step(variables):
        saver.save(variables, tmp_path / "m")
        return variables

    with pytest.raises(TypeError, match="params/n2/W.*traced"):
        step(init())


def test_overwriting_a_checkpoint_keeps_one_entry(tmp_path):
    saver = js.Saver()
    first, second = init(0), offset(init(0), 1)
    saver.save(first, tmp_path / "model", global_step=1)
    saver.save(first, tmp_path / "model", global_step=2)
    path = saver.save(second, tmp_path / "model", global_step=1)
    assert saver.last_checkpoints == [str(tmp_path / "model-2"), path]
    state = read_state(tmp_path)
    assert state["all_model_checkpoint_paths"] == ["model-2", "model-1"]
    assert state["model_checkpoint_path"] == "model-1"
    assert_tree_equal(saver.restore(path, init(5)), second)


def test_a_second_saver_overwriting_updates_the_state(tmp_path):
    js.Saver().save(init(0), tmp_path / "model")
    js.Saver().save(offset(init(0), 2), tmp_path / "model")
    assert js.latest_checkpoint(tmp_path) == str(tmp_path / "model")
    restored = js.Saver().restore(js.latest_checkpoint(tmp_path), init(3))
    assert_tree_equal(restored, offset(init(0), 2))


# ------------------------------------------------------------ max_to_keep


def test_max_to_keep_deletes_the_oldest(tmp_path):
    saver = js.Saver(max_to_keep=2)
    for step in range(5):
        saver.save(offset(init(), step), tmp_path / "model", global_step=step)
    assert listdir(tmp_path) == ["checkpoint", "model-3", "model-4"]
    assert saver.last_checkpoints == [str(tmp_path / f"model-{i}") for i in (3, 4)]
    assert read_state(tmp_path)["all_model_checkpoint_paths"] == ["model-3", "model-4"]
    latest = js.latest_checkpoint(tmp_path)
    assert latest == str(tmp_path / "model-4")
    assert_tree_equal(saver.restore(latest, init(9)), offset(init(), 4))


@pytest.mark.parametrize("max_to_keep", [None, 0])
def test_max_to_keep_none_keeps_everything(tmp_path, max_to_keep):
    saver = js.Saver(max_to_keep=max_to_keep)
    for step in range(4):
        saver.save(init(), tmp_path / "model", global_step=step)
    assert listdir(tmp_path) == ["checkpoint"] + [f"model-{i}" for i in range(4)]
    assert saver.last_checkpoints == []  # TF1: nothing is tracked
    state = read_state(tmp_path)
    assert state["model_checkpoint_path"] == "model-3"
    assert state["all_model_checkpoint_paths"] == ["model-3"]
    assert js.latest_checkpoint(tmp_path) == str(tmp_path / "model-3")


def test_keep_checkpoint_every_n_hours_preserves_old_checkpoints(tmp_path):
    # Every checkpoint is older than "now + 1e-9 hours" only for a moment, so
    # each one that max_to_keep drops is preserved on disk (TF1's rule).
    saver = js.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=1e-9)
    for step in range(3):
        time.sleep(0.01)
        saver.save(init(), tmp_path / "model", global_step=step)
    assert listdir(tmp_path) == ["checkpoint", "model-0", "model-1", "model-2"]
    assert saver.last_checkpoints == [str(tmp_path / "model-2")]
    assert read_state(tmp_path)["all_model_checkpoint_paths"] == ["model-2"]


def test_write_state_false_records_nothing(tmp_path):
    saver = js.Saver(max_to_keep=1)
    path = saver.save(init(), tmp_path / "model", 1, write_state=False)
    assert saver.last_checkpoints == [] and js.latest_checkpoint(tmp_path) is None
    assert js.list_variables(path)[0] == ("params/n2/W", (4, 3))


# ------------------------------------------------------- latest_checkpoint


def test_latest_checkpoint_without_checkpoints(tmp_path):
    assert js.latest_checkpoint(tmp_path) is None
    assert js.latest_checkpoint(tmp_path / "missing") is None


def test_latest_checkpoint_of_a_deleted_checkpoint_is_none(tmp_path):
    path = js.Saver().save(init(), tmp_path / "model", global_step=1)
    shutil.rmtree(path)
    assert js.latest_checkpoint(tmp_path) is None


def test_latest_checkpoint_rejects_a_corrupt_state(tmp_path):
    (tmp_path / "checkpoint").write_text("model_checkpoint_path = model-1\n")
    with pytest.raises(js.CheckpointError, match="checkpoint state file.*checkpoint"):
        js.latest_checkpoint(tmp_path)


def test_state_write_is_atomic(tmp_path, monkeypatch):
    from jscope._src.checkpoint import layout as checkpoint

    saver = js.Saver()
    saver.save(init(), tmp_path / "model", global_step=1)
    before = (tmp_path / "checkpoint").read_text()

    class CrashMidWrite:  # the state file's JSON module, failing half-way
        load, loads = staticmethod(json.load), staticmethod(json.loads)

        @staticmethod
        def dump(state, f, **kwargs):
            f.write('{"model_checkpoint_path": "mod')
            raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "json", CrashMidWrite)
    with pytest.raises(OSError, match="disk full"):
        saver.save(init(), tmp_path / "model", global_step=2)
    assert (tmp_path / "checkpoint").read_text() == before
    assert listdir(tmp_path) == ["checkpoint", "model-1", "model-2"]  # no temp file
    assert js.latest_checkpoint(tmp_path) == str(tmp_path / "model-1")


# ----------------------------------------------------------------- restore


@pytest.mark.parametrize(
    "dtype",
    [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32, jnp.int8, jnp.uint8, jnp.bool_],
)
def test_round_trip_dtypes(tmp_path, dtype):
    values = jax.random.normal(jax.random.key(0), (3, 5)) * 100
    x = values > 0 if dtype == jnp.bool_ else values.astype(dtype)
    variables = {"params": {"x": x}, "state": {"s": jnp.array(7, jnp.int32)}}
    saver = js.Saver()
    path = saver.save(variables, tmp_path / "model")
    target = jax.tree.map(jnp.zeros_like, variables)
    restored = saver.restore(path, target)
    assert_tree_equal(restored, variables)
    assert js.load_variable(path, "params/x").dtype == x.dtype
    assert np.array_equal(np.asarray(js.load_variable(path, "params/x")), x)


def test_restore_returns_a_new_tree_in_the_targets_order(tmp_path):
    variables = init()
    saver = js.Saver()
    path = saver.save(variables, tmp_path / "model")
    target = offset(init(1), 3)
    snapshot = copy.deepcopy(target)
    restored = saver.restore(path, target)
    assert_tree_equal(restored, variables)
    assert list(js.flatten(restored)) == list(js.flatten(target))
    assert_tree_equal(target, snapshot)  # the target is not mutated
    assert restored is not target and restored["params"] is not target["params"]
    assert list(restored) == list(target) and list(restored["params"]["n2"]) == [
        "W",
        "b",
    ]


def test_restore_under_a_new_name(tmp_path):
    saved = {"state": {"counter": jnp.array(10, jnp.int32)}}
    path = js.Saver({"my_counter": "state/counter"}).save(saved, tmp_path / "m")
    assert js.list_variables(path) == [("my_counter", ())]
    target = {"params": {"w": jnp.ones(2)}, "state": {"steps": jnp.array(0)}}
    restored = js.Saver({"my_counter": "state/steps"}).restore(path, target)
    assert int(restored["state"]["steps"]) == 10
    assert restored["params"]["w"] is target["params"]["w"]


def test_restore_a_subset_leaves_other_variables_untouched(tmp_path):
    variables = init()
    js.Saver().save(variables, tmp_path / "model")
    target = offset(init(1), 5)
    restored = js.Saver(["params/n2/b"]).restore(tmp_path / "model", target)
    assert np.array_equal(restored["params"]["n2"]["b"], variables["params"]["n2"]["b"])
    assert restored["params"]["n2"]["W"] is target["params"]["n2"]["W"]
    assert restored["state"]["counter"] is target["state"]["counter"]


def test_restore_ignores_extra_checkpoint_keys(tmp_path):
    variables = init()
    js.Saver().save(variables, tmp_path / "model")
    target = {"state": {"counter": jnp.array(-1, jnp.int32)}}
    restored = js.Saver().restore(tmp_path / "model", target)
    assert restored == {"state": {"counter": variables["state"]["counter"]}}


def test_restore_into_shape_dtype_structs_runs_no_initializer(tmp_path):
    calls = []

    def counting(key, shape, dtype=jnp.float32):
        calls.append(shape)
        return jax.random.normal(key, shape, dtype)

    def fn():
        js.get_variable("w", [5, 2], initializer=counting)
        js.get_variable("b", [2], dtype=jnp.bfloat16, initializer=counting)

    variables = js.init(fn, jax.random.key(0))
    path = js.Saver().save(variables, tmp_path / "model")
    shapes = jax.eval_shape(lambda k: js.init(fn, k), jax.random.key(1))
    traced = len(calls)
    restored = js.Saver().restore(path, shapes)
    assert len(calls) == traced  # restore ran no initializer
    assert_tree_equal(restored, variables)
    assert list(js.flatten(restored)) == list(js.flatten(shapes))  # target's order
    for leaf in jax.tree.leaves(restored):
        assert isinstance(leaf, jax.Array)
        assert leaf.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_shape_dtype_struct_leaves_outside_the_list_stay_abstract(tmp_path):
    variables = init()
    js.Saver().save(variables, tmp_path / "model")
    shapes = jax.eval_shape(init)
    restored = js.Saver(["state/counter"]).restore(tmp_path / "model", shapes)
    assert int(restored["state"]["counter"]) == 0
    assert restored["params"]["n2"]["W"] == shapes["params"]["n2"]["W"]


def test_one_error_lists_every_missing_and_mismatched_variable(tmp_path):
    saver = js.Saver()
    path = saver.save(init(), tmp_path / "model")
    target = {
        "params": {
            "n2": {"W": jnp.zeros((4, 4)), "b": jnp.zeros(3, jnp.float32)},
            "n3": {"W": jnp.zeros(2)},
        },
        "state": {"counter": jnp.zeros((2,), jnp.float32), "step": jnp.array(0)},
    }
    with pytest.raises(js.CheckpointMismatchError) as info:
        saver.restore(path, target)
    message = str(info.value)
    assert "2 missing and 3 mismatched" in message
    assert "params/n3/W" in message and "state/step" in message
    assert "params/n2/W: expected shape (4, 4) (the target's), found shape (4, 3)" in (
        message
    )
    assert (
        "params/n2/b: expected dtype float32 (the target's), found dtype bfloat16"
        in (message)
    )
    assert "state/counter: expected shape (2,)" in message
    assert "state/counter: expected dtype float32" in message
    assert "js.list_variables" in message
    assert info.value.path == "params/n2/W"
    assert isinstance(info.value, ValueError)


def test_mismatch_error_names_keys_and_paths_not_in_the_target(tmp_path):
    path = js.Saver({"c": "state/counter"}).save(init(), tmp_path / "model")
    saver = js.Saver({"c": "state/counter", "w": "params/n2/W", "x": "counter"})
    target = {"state": {"counter": jnp.array(0.0)}}
    with pytest.raises(ValueError) as info:
        saver.restore(path, target)
    message = str(info.value)
    assert "listed in the Saver but not in the target tree" in message
    assert "params/n2/W (checkpoint key 'w')" in message
    assert "counter (checkpoint key 'x') (did you mean 'state/counter'?" in message
    assert "state/counter (checkpoint key 'c'): expected dtype float32" in message


def test_restore_error_leaves_the_target_unchanged(tmp_path):
    path = js.Saver().save(init(), tmp_path / "model")
    target = {"params": {"n2": {"W": jnp.zeros((1,))}}}
    snapshot = copy.deepcopy(target)
    with pytest.raises(ValueError, match="params/n2/W"):
        js.Saver().restore(path, target)
    assert_tree_equal(target, snapshot)


def test_restore_of_none(tmp_path):
    with pytest.raises(js.CheckpointNotFoundError, match="Can't load save_path when"):
        js.Saver().restore(js.latest_checkpoint(tmp_path), init())


@pytest.mark.parametrize(
    "name, why",
    [
        ("ckpt/model", "no such file or directory"),
        ("notes.txt", "it is a file"),
        (
            "ckpt",
            r"it holds checkpoints, the latest being .*ckpt/model-3.*latest_checkp",
        ),
        (".", "directory without Orbax checkpoint metadata"),
        ("model.orbax-checkpoint-tmp", "unfinished save"),
    ],
)
def test_restore_of_paths_that_are_not_checkpoints(tmp_path, name, why):
    saver = js.Saver()
    saver.save(init(), tmp_path / "ckpt" / "model", global_step=3)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "model.orbax-checkpoint-tmp").mkdir()
    path = os.path.join(tmp_path, name)
    with pytest.raises(js.CheckpointNotFoundError) as info:
        saver.restore(path, init())
    assert isinstance(info.value, ValueError)
    assert f"The passed save_path is not a valid checkpoint: {path} (" in str(
        info.value
    )
    assert re.search(why, str(info.value)), str(info.value)
    assert info.value.path == path


@pytest.mark.parametrize("target", [None, "tree", 3])
def test_restore_target_must_be_a_tree(tmp_path, target):
    path = js.Saver().save(init(), tmp_path / "model")
    with pytest.raises(TypeError, match="must be a variable tree"):
        js.Saver().restore(path, target)


def test_restore_keeps_numpy_leaves_numpy(tmp_path):
    variables = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    path = js.Saver().save(variables, tmp_path / "model")
    restored = js.Saver().restore(path, {"params": {"w": np.zeros((2, 3), np.float32)}})
    assert isinstance(restored["params"]["w"], np.ndarray)
    assert np.array_equal(restored["params"]["w"], variables["params"]["w"])


def test_round_trip_of_jit_produced_model_trees(tmp_path):
    def mlp(x):
        for i in range(3):
            with js.variable_scope(f"layer{i}"):
                w = js.get_variable("W", [x.shape[-1], 8])
                b = js.get_variable("b", [8], initializer=js.initializers.zeros())
                x = jax.nn.relu(x @ w + b)
        step = js.get_variable("step", [], dtype=jnp.int32, trainable=False)
        js.assign(step, step + 1)
        return x.sum()

    x = jnp.ones((2, 5))
    variables = jax.jit(lambda k: js.init(mlp, k, x))(jax.random.key(0))

    @jax.jit
    def train_step(v):
        loss = lambda p: js.apply(mlp, {**v, "params": p}, x, mutable=["state"])[0]  # noqa: E731
        grads = jax.grad(loss)(v["params"])
        _, new = js.apply(mlp, v, x, mutable=["state"])
        params = jax.tree.map(lambda p, g: p - 0.1 * g, v["params"], grads)
        return {**new, "params": params}

    variables = train_step(train_step(variables))
    saver = js.Saver()
    path = saver.save(variables, tmp_path / "model", global_step=2)
    shapes = jax.eval_shape(lambda k: js.init(mlp, k, x), jax.random.key(0))
    restored = saver.restore(path, shapes)
    assert_tree_equal(restored, variables)
    assert int(restored["state"]["step"]) == 2
    out = jax.jit(lambda v: js.apply(mlp, v, x, mutable=["state"])[0])
    assert np.array_equal(out(restored), out(variables))


def test_restore_reads_orbax_checkpoints_of_nested_trees(tmp_path):
    variables = init()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "raw", variables)
    checkpointer.wait_until_finished()
    path = tmp_path / "raw"
    assert [k for k, _ in js.list_variables(path)] == sorted(js.flatten(variables))
    assert_tree_equal(js.Saver().restore(path, offset(init(1), 1)), variables)
    subset = js.Saver(["state/counter"]).restore(path, jax.eval_shape(init))
    assert int(subset["state"]["counter"]) == 0
    w = js.load_variable(path, "params/n2/W")
    assert np.array_equal(w, variables["params"]["n2"]["W"])
    # No jscope checksums there: verify reads every array through Orbax.
    assert js.verify_checkpoint(path) == sorted(js.flatten(variables))


# ------------------------------------------------ list_variables / load_variable


def test_list_variables_and_load_variable(tmp_path):
    variables = init()
    saver = js.Saver({"z": "params/n2/W", "a": "state/counter", "m/b": "params/n2/b"})
    path = saver.save(variables, tmp_path / "model", global_step=1)
    expected = [("a", ()), ("m/b", (3,)), ("z", (4, 3))]
    assert js.list_variables(path) == expected
    assert js.list_variables(tmp_path) == expected  # a directory: its latest
    w = js.load_variable(tmp_path, "z")
    assert isinstance(w, jax.Array)
    assert np.array_equal(w, variables["params"]["n2"]["W"])
    with pytest.raises(
        js.CheckpointMismatchError,
        match="Key W not found in checkpoint.*It holds: a, m/b, z",
    ):
        js.load_variable(path, "W")
    with pytest.raises(js.CheckpointNotFoundError, match="not a valid checkpoint"):
        js.list_variables(tmp_path / "nothing")


def test_list_variables_agrees_with_orbax_metadata(tmp_path):
    variables = {
        "params": {"w": jnp.ones((2, 3), jnp.bfloat16), "v": jnp.zeros(4, jnp.int8)},
        "state": {"ok": jnp.array(True), "step": jnp.array(3, jnp.uint32)},
    }
    path = js.Saver().save(variables, tmp_path / "model")
    orbax = ocp.PyTreeCheckpointHandler().metadata(tmp_path / "model").tree
    assert js.list_variables(path) == sorted(
        (key, tuple(m.shape)) for key, m in orbax.items()
    )
    for key, m in orbax.items():
        assert js.load_variable(path, key).dtype == m.dtype


# ------------------------------------------------------------------- async


def test_non_blocking_save_commits_in_the_background(tmp_path):
    saver = js.Saver(max_to_keep=2)
    trees = [offset(init(), i) for i in range(4)]
    for step, tree in enumerate(trees):
        path = saver.save(tree, tmp_path / "model", global_step=step, blocking=False)
        assert path == str(tmp_path / f"model-{step}")
    saver.wait_until_finished()  # each save waited for the pending one
    assert listdir(tmp_path) == ["checkpoint", "model-2", "model-3"]
    assert saver.last_checkpoints == [str(tmp_path / f"model-{i}") for i in (2, 3)]
    assert_tree_equal(saver.restore(js.latest_checkpoint(tmp_path), init(5)), trees[3])


def test_restore_waits_for_a_pending_save(tmp_path):
    saver = js.Saver()
    variables = offset(init(), 1)
    path = saver.save(variables, tmp_path / "model", blocking=False)
    assert_tree_equal(saver.restore(path, init(2)), variables)
    assert js.latest_checkpoint(tmp_path) == path


def test_non_blocking_save_has_copied_the_arrays(tmp_path):
    variables = {"params": {"w": jnp.arange(1000.0), "v": jnp.ones((50, 50))}}
    expected = jax.tree.map(np.array, variables)
    saver = js.Saver()
    path = saver.save(variables, tmp_path / "model", blocking=False)
    for leaf in jax.tree.leaves(variables):
        leaf.delete()  # the caller may free (or donate) the arrays at once
    saver.wait_until_finished()
    restored = saver.restore(path, jax.tree.map(jnp.zeros_like, expected))
    assert_tree_equal(restored, expected)


def test_errors_of_a_background_save_surface_once(tmp_path, monkeypatch):
    from jscope._src.checkpoint import layout as checkpoint

    saver = js.Saver()
    saver.save(init(), tmp_path / "model", global_step=1)

    def failing_write(directory, state):
        raise OSError("state write failed")

    monkeypatch.setattr(checkpoint, "write_state", failing_write)
    saver.save(init(), tmp_path / "model", global_step=2, blocking=False)
    with pytest.raises(OSError, match="state write failed"):
        saver.wait_until_finished()
    saver.wait_until_finished()  # raised once
    assert js.latest_checkpoint(tmp_path) == str(tmp_path / "model-1")


EXIT_WITHOUT_WAITING = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    import jscope as js

    tree = {"params": {"w": jnp.arange(1 << 20, dtype=jnp.float32)}}
    js.Saver().save(tree, sys.argv[1] + "/model", global_step=5, blocking=False)
    print("returned", flush=True)  # and the program ends without waiting
    """
)


def test_a_pending_save_completes_when_the_program_ends(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_WAITING, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and "returned" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert js.latest_checkpoint(tmp_path) == str(tmp_path / "model-5")
    w = js.load_variable(tmp_path, "params/w")
    assert np.array_equal(w, np.arange(1 << 20, dtype=np.float32))


# ----------------------------------------------------------------- sharding

SHARDED = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_num_cpu_devices", 4)
    import jscope as js
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
    row = NamedSharding(mesh, P("a", None))
    col = NamedSharding(mesh, P(None, "b"))
    w = jax.device_put(jnp.arange(32.0).reshape(8, 4), row)
    variables = {"params": {"w": w}}
    path = js.Saver().save(variables, sys.argv[1] + "/model")
    target = {"params": {"w": jax.device_put(jnp.zeros((8, 4)), col)}}
    restored = js.Saver().restore(path, target)["params"]["w"]
    assert restored.sharding == col, restored.sharding
    assert np.array_equal(restored, w)
    shapes = {"params": {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=row)}}
    restored = js.Saver().restore(path, shapes)["params"]["w"]
    assert restored.sharding == row, restored.sharding
    assert np.array_equal(restored, w)
    print("SHARDING OK")
    """
)


def test_restored_arrays_keep_the_targets_sharding(tmp_path):
    proc = run_source(SHARDED, tmp_path, timeout=120)
    assert "SHARDING OK" in proc.stdout


# ---------------------------------------------------------- fault injection

SAVER_CHILD = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    import jscope as js

    directory, start = sys.argv[1], int(sys.argv[2])

    def tree_at(step):
        # 8 arrays of 1M float32 values (32 MiB), each a function of the step.
        base = jnp.arange(1 << 20, dtype=jnp.float32)
        return {"params": {f"w{i}": base * (i + 1) + step for i in range(8)},
                "state": {"step": jnp.array(step, jnp.int32)}}

    saver = js.Saver(max_to_keep=2)
    step = start
    while True:
        saver.save(tree_at(step), directory + "/model", global_step=step)
        print(f"saved {step}", flush=True)
        step += 1
    """
)


def expected_tree(step):
    base = np.arange(1 << 20, dtype=np.float32)
    return {
        "params": {f"w{i}": base * (i + 1) + step for i in range(8)},
        "state": {"step": np.array(step, np.int32)},
    }


def test_killed_saves_leave_the_last_checkpoint_readable(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    next_step = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", SAVER_CHILD, str(tmp_path), str(next_step)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            line = child.stdout.readline()  # one save done: there is a checkpoint
            assert line.startswith("saved"), line
            time.sleep(rng.uniform(0.0, 0.6))  # then kill it at a random moment
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        latest = js.latest_checkpoint(tmp_path)
        assert latest is not None and os.path.basename(latest).startswith("model-")
        step = int(latest.rsplit("-", 1)[1])
        assert step >= next_step
        state = read_state(tmp_path)
        for name in state["all_model_checkpoint_paths"]:  # no partial directory
            assert "orbax-checkpoint-tmp" not in name
            assert os.path.isfile(tmp_path / name / "_METADATA"), name
        expected = expected_tree(step)
        restored = js.Saver().restore(latest, jax.tree.map(np.zeros_like, expected))
        assert_tree_equal(restored, expected)
        next_step = step + 1
