"""Makes the TF1 checkpoint fixtures of tests/test_tf1_checkpoint.py with TensorFlow.

Run once, in a virtualenv with TensorFlow (the tests never import it)::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python tests/data/tf1/make_fixtures.py

It writes, beside itself:

- ``dtypes/``: every numeric dtype TensorFlow saves, scalars and 0-size tensors,
  written by ``SaveV2`` (the op behind ``tf.train.Saver``), with a text-format
  ``checkpoint`` state file written by ``tf.train.update_checkpoint_state``
  (absolute paths, as TF1 writes by default, of another machine:
  ``/home/user/runs/dtypes/``, as in a directory copied from one).
- ``tf1_model/``: a TF1 graph-mode model saved by ``tf.compat.v1.train.Saver``
  (``sharded=True`` over three CPU devices: three data shards), with a
  partitioned variable (``fixed_size_partitioner``), ``global_step`` and the
  state file (relative paths); ``model.ckpt-1000``.
- ``tf2_object/``: a ``tf.train.Checkpoint`` of a ``tf.Module`` (TF2's object
  names, ``.../.ATTRIBUTES/VARIABLE_VALUE``); ``ckpt-1``.
- ``expected.npz`` / ``expected.json``: what ``tf.train.load_checkpoint`` reads
  from each (bfloat16 stored as its uint16 bits), and the TensorFlow version.
"""

import json
import os
import shutil

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)


def values(dtype, shape):
    if dtype == tf.bool:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.is_complex:
        re, im = rng.normal(size=shape), rng.normal(size=shape)
        return (re + 1j * im).astype(dtype.as_numpy_dtype)
    if dtype.is_floating:
        return rng.normal(size=shape).astype(np.float32)
    info = np.iinfo(dtype.as_numpy_dtype)
    return rng.integers(
        info.min, info.max, shape, dtype=dtype.as_numpy_dtype, endpoint=True
    )


def make_dtypes(directory):
    dtypes = [
        tf.float16, tf.bfloat16, tf.float32, tf.float64,
        tf.int8, tf.int16, tf.int32, tf.int64,
        tf.uint8, tf.uint16, tf.uint32, tf.uint64,
        tf.bool, tf.complex64, tf.complex128,
    ]  # fmt: skip
    names, tensors = [], []
    for dtype in dtypes:
        for suffix, shape in (("", (3, 4)), ("_scalar", ()), ("_empty", (0, 3))):
            names.append(f"{dtype.name}{suffix}")
            tensors.append(tf.cast(tf.constant(values(dtype, shape)), dtype))
    names.append("nested/scope/w")
    tensors.append(tf.constant(rng.normal(size=(2, 3, 4)).astype(np.float32)))
    os.makedirs(directory)
    prefix = os.path.join(directory, "model.ckpt-7")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=tensors,
    )
    # TF1's default is absolute paths; these name the checkpoint where it was
    # on another machine, as in a directory copied from one.
    elsewhere = "/home/user/runs/dtypes/model.ckpt-7"
    tf.compat.v1.train.update_checkpoint_state(directory, elsewhere, [elsewhere])
    return prefix


def make_tf1_model(directory):
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        x = tf1.placeholder(tf.float32, (None, 5))
        with tf1.variable_scope("model"):
            with tf.device("/cpu:0"), tf1.variable_scope("dense"):
                kernel = tf1.get_variable("kernel", (5, 4))
                bias = tf1.get_variable(
                    "bias", (4,), initializer=tf1.zeros_initializer()
                )
                h = tf.matmul(x, kernel) + bias
            with tf.device("/cpu:1"):
                emb = tf1.get_variable(
                    "embedding",
                    (130, 3),
                    partitioner=tf1.fixed_size_partitioner(2),
                )
            with tf.device("/cpu:2"):
                scale = tf1.get_variable(
                    "scale", (), initializer=tf1.ones_initializer()
                )
                counts = tf1.get_variable(
                    "counts", (4,), tf.int64, initializer=tf1.zeros_initializer()
                )
        step = tf1.train.get_or_create_global_step()
        _ = h * scale + tf.reduce_sum(emb) + tf.cast(tf.reduce_sum(counts), tf.float32)
        saver = tf1.train.Saver(sharded=True, save_relative_paths=True)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(step.assign(1000))
            os.makedirs(directory)
            prefix = os.path.join(directory, "model.ckpt")
            return saver.save(sess, prefix, 1000, write_meta_graph=False)


def make_tf2_object(directory):
    class Dense(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(rng.normal(size=(3, 2)).astype(np.float32))
            self.bias = tf.Variable(np.zeros(2, np.float32))

    model = tf.Module()
    model.dense = Dense()
    model.steps = tf.Variable(np.int64(5))
    ckpt = tf.train.Checkpoint(model=model)
    return ckpt.save(os.path.join(directory, "ckpt"))


def expected(prefixes):
    arrays, meta = {}, {"tensorflow": tf.__version__, "checkpoints": {}}
    for fixture, prefix in prefixes.items():
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
        meta["checkpoints"][fixture] = {
            "prefix": os.path.relpath(prefix, HERE),
            "variables": {
                name: [list(shapes[name]), dtypes[name].name] for name in sorted(shapes)
            },
        }
        for name in shapes:
            if dtypes[name] == tf.string:
                continue
            value = reader.get_tensor(name)
            if dtypes[name] == tf.bfloat16:
                value = np.asarray(value).view(np.uint16)
            arrays[f"{fixture}:{name}"] = value
    np.savez_compressed(os.path.join(HERE, "expected.npz"), **arrays)
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 3
    )
    for name in ("dtypes", "tf1_model", "tf2_object"):
        shutil.rmtree(os.path.join(HERE, name), ignore_errors=True)
    prefixes = {
        "dtypes": make_dtypes(os.path.join(HERE, "dtypes")),
        "tf1_model": make_tf1_model(os.path.join(HERE, "tf1_model")),
        "tf2_object": make_tf2_object(os.path.join(HERE, "tf2_object")),
    }
    expected(prefixes)
    for fixture, prefix in prefixes.items():
        print(fixture, os.path.relpath(prefix, HERE))


if __name__ == "__main__":
    main()
