"""Checks that TensorFlow reads what ``js.tf1.save_checkpoint`` writes.

Two steps, recorded in ``tf_reads_jscope.txt`` beside this file::

    # 1. with jscope: write jscope_written/model.ckpt-3 from expected.npz's
    #    dtypes values (every dtype, scalars, 0-size) and 300 more scalars, in
    #    index blocks of 512 bytes so that the index has many blocks
    python tests/data/tf1/check_tf_reads_jscope.py write
    # 2. with TensorFlow: read it with tf.train.load_checkpoint, compare
    /tmp/tfvenv/bin/python tests/data/tf1/check_tf_reads_jscope.py read
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = os.path.join(HERE, "jscope_written", "model.ckpt-3")


def expected():
    stored = np.load(os.path.join(HERE, "expected.npz"))
    with open(os.path.join(HERE, "expected.json")) as f:
        meta = json.load(f)
    out = {}
    for name, (_, dtype) in meta["checkpoints"]["dtypes"]["variables"].items():
        value = stored[f"dtypes:{name}"]
        out[name] = (value, dtype)  # bfloat16 as its uint16 bits
    for i in range(300):
        out[f"many/v{i:03d}"] = (np.float32(i), "float32")
    return out


def write():
    import ml_dtypes

    import jscope as js
    from jscope._src.tf1 import table

    table.BLOCK_BYTES = 512  # many index blocks
    tree = {}
    for name, (value, dtype) in expected().items():
        if dtype == "bfloat16":
            value = value.view(ml_dtypes.bfloat16)
        tree[name] = np.asarray(value)
    js.tf1.save_checkpoint({"params": tree}, PREFIX, name_map=lambda p: p)
    # name_map: the flat names have "/" in them; keep each whole
    print("wrote", os.path.relpath(PREFIX, HERE))


def read():
    import tensorflow as tf

    reader = tf.train.load_checkpoint(PREFIX)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    want = expected()
    assert set(shapes) == set(want), set(shapes) ^ set(want)
    for name, (value, dtype) in sorted(want.items()):
        got = reader.get_tensor(name)
        assert dtypes[name].name == dtype, (name, dtypes[name], dtype)
        assert list(shapes[name]) == list(np.shape(value)), name
        if dtype == "bfloat16":
            got = np.asarray(got).view(np.uint16)
        assert np.array_equal(got, value) and np.asarray(got).dtype == value.dtype, name
    print(
        f"TensorFlow {tf.__version__} read {len(want)} tensors of "
        f"{os.path.relpath(PREFIX, HERE)} (dtypes: "
        f"{', '.join(sorted({d for _, d in want.values()}))}): all equal, bit for bit"
    )


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]]()
