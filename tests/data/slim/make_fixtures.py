"""Records tf-slim's variables and outputs for the tests of ``jscope.slim``.

Run once with TensorFlow 2.21, tf-slim 1.1.0 and tf-keras 2.21 (TF1 graph mode
through ``tf.compat.v1``)::

    python tests/data/slim/make_fixtures.py

Each case builds a small network with ``tf_slim`` in a graph of its own, sets
every variable to a seeded random value (positive for variances and gammas),
runs it once on a seeded input and stores, in ``cases.npz``:

- ``<case>/names``: the variables' names in creation order (``global_variables``);
- ``<case>/x``: the input; ``<case>/y0``, ``y1``, ...: the outputs;
- ``<case>/var/<name>``: each variable's value before the run;
- ``<case>/after/<name>``: each variable's value after the run: a training-mode
  batch norm has moved its statistics (the run also ran ``UPDATE_OPS``);
- ``<case>/reg``: ``tf.losses.get_regularization_loss()`` where the case has
  regularizers.

The ``net`` case is also saved with ``tf.compat.v1.train.Saver`` under
``net_ckpt/`` (after its training step), for the end-to-end test through
``js.tf1.restore``. The tests read these files with NumPy only.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as _ops

# tf-slim 1.1.0 predates TensorFlow 2.21: it reads ``ops.Tensor`` (now gone) and
# TF's ``tf.layers`` shims look for ``tf_keras.legacy_tf_layers`` where tf-keras
# 2.21 has ``tf_keras.src.legacy_tf_layers``.
_ops.Tensor = tf.Tensor
for _m in ["", ".base", ".core", ".convolutional", ".normalization", ".pooling"]:
    sys.modules["tf_keras.legacy_tf_layers" + _m] = importlib.import_module(
        "tf_keras.src.legacy_tf_layers" + _m
    )

import tf_slim as slim  # noqa: E402

tf1 = tf.compat.v1
tf1.disable_eager_execution()
HERE = pathlib.Path(__file__).resolve().parent

SHAPES = {"x4": (2, 7, 7, 3), "x2": (4, 6), "x3": (2, 3, 6)}


def bn_in_place(**kw):
    return {"is_training": True, "updates_collections": None, **kw}


def net(x):
    """A small classifier in the style of the tf-slim README, with arg_scopes."""
    with (
        tf1.variable_scope("model"),
        slim.arg_scope(
            [slim.conv2d, slim.fully_connected],
            weights_regularizer=slim.l2_regularizer(0.01),
            normalizer_fn=slim.batch_norm,
            normalizer_params=bn_in_place(decay=0.9, scale=True),
        ),
    ):
        with slim.arg_scope([slim.conv2d], padding="VALID", stride=1):
            h = slim.conv2d(x, 4, [3, 3], scope="conv1")
            h = slim.max_pool2d(h, [2, 2], scope="pool1")
            h = slim.conv2d(h, 6, [1, 1], padding="SAME", scope="conv2")
        h = slim.flatten(h)
        h = slim.fully_connected(h, 5, scope="fc1")
        h = slim.dropout(h, 0.5, is_training=False)
        return slim.fully_connected(
            h, 3, activation_fn=None, normalizer_fn=None, scope="logits"
        )


CASES = {
    # name: (input, builder)
    "conv_default": ("x4", lambda x: slim.conv2d(x, 4, [3, 3])),
    "conv_valid_stride": (
        "x4",
        lambda x: slim.conv2d(
            x, 5, 3, stride=2, padding="VALID", activation_fn=None, scope="c"
        ),
    ),
    "conv_same_stride": ("x4", lambda x: slim.conv2d(x, 2, [3, 2], stride=2)),
    "conv_rate": (
        "x4",
        lambda x: slim.conv2d(x, 4, [3, 2], rate=2, activation_fn=tf.nn.tanh),
    ),
    "conv_nobias": ("x4", lambda x: slim.conv2d(x, 4, 1, biases_initializer=None)),
    "conv_bn": (
        "x4",
        lambda x: slim.conv2d(
            x,
            4,
            3,
            normalizer_fn=slim.batch_norm,
            normalizer_params=bn_in_place(scale=True, decay=0.9),
        ),
    ),
    "conv_transpose_same": ("x4", lambda x: slim.conv2d_transpose(x, 2, 3, stride=2)),
    "conv_transpose_valid": (
        "x4",
        lambda x: slim.conv2d_transpose(
            x, 2, [3, 2], stride=2, padding="VALID", activation_fn=None
        ),
    ),
    "conv_transpose_k1": (
        "x4",
        lambda x: slim.conv2d_transpose(x, 3, 1, stride=3, padding="VALID"),
    ),
    "separable": ("x4", lambda x: slim.separable_conv2d(x, 5, 3, depth_multiplier=2)),
    "separable_depthwise": (
        "x4",
        lambda x: slim.separable_conv2d(
            x, None, 3, depth_multiplier=2, stride=2, activation_fn=None
        ),
    ),
    "separable_rate": (
        "x4",
        lambda x: slim.separable_conv2d(x, 4, 3, rate=2, padding="VALID"),
    ),
    "fc": ("x2", lambda x: slim.fully_connected(x, 5)),
    "fc_linear": (
        "x2",
        lambda x: slim.fully_connected(x, 3, activation_fn=None, scope="logits"),
    ),
    "fc_rank3": ("x3", lambda x: slim.fully_connected(x, 4)),
    "bn_4d_eval": ("x4", lambda x: slim.batch_norm(x, is_training=False, scale=True)),
    "bn_4d_in_place": ("x4", lambda x: slim.batch_norm(x, **bn_in_place(decay=0.9))),
    "bn_4d_default": ("x4", lambda x: slim.batch_norm(x, scale=True, decay=0.9)),
    "bn_2d_default": (
        "x2",
        lambda x: slim.batch_norm(x, center=False, scale=True, decay=0.9),
    ),
    "bn_3d_default": ("x3", lambda x: slim.batch_norm(x, scale=True, decay=0.9)),
    "bn_3d_in_place": ("x3", lambda x: slim.batch_norm(x, **bn_in_place(decay=0.9))),
    "bn_small_eps": (
        "x4",
        lambda x: slim.batch_norm(0.01 * x, **bn_in_place(epsilon=1e-6, decay=0.5)),
    ),
    "bn_3d_small_eps": (
        "x3",
        lambda x: slim.batch_norm(0.01 * x, **bn_in_place(epsilon=1e-6, decay=0.5)),
    ),
    "ln_default": ("x4", lambda x: slim.layer_norm(x)),
    "ln_axes": (
        "x3",
        lambda x: slim.layer_norm(x, begin_norm_axis=-1, begin_params_axis=1),
    ),
    "ln_noscale": (
        "x2",
        lambda x: slim.layer_norm(x, scale=False, activation_fn=tf.nn.relu),
    ),
    "pools": (
        "x4",
        lambda x: (
            slim.max_pool2d(x, 3, stride=2, padding="SAME"),
            slim.avg_pool2d(x, 3, stride=2, padding="SAME"),
            slim.max_pool2d(x, [2, 2]),
            slim.avg_pool2d(x, [2, 3], stride=1),
        ),
    ),
    "flatten": ("x4", lambda x: slim.flatten(x)),
    "dropout_eval": ("x4", lambda x: slim.dropout(x, 0.5, is_training=False)),
    "repeat": ("x4", lambda x: slim.repeat(x, 3, slim.conv2d, 4, [3, 3], scope="c1")),
    "repeat_noscope": ("x4", lambda x: slim.repeat(x, 2, slim.conv2d, 3, 3)),
    "stack": ("x2", lambda x: slim.stack(x, slim.fully_connected, [8, 6], scope="fc")),
    "stack_conv": (
        "x4",
        lambda x: slim.stack(x, slim.conv2d, [(4, [3, 3]), (5, [1, 1])]),
    ),
    "conv_bn_default": (
        "x4",
        lambda x: slim.conv2d(
            x,
            4,
            3,
            normalizer_fn=slim.batch_norm,
            normalizer_params={"scale": True, "decay": 0.9},
        ),
    ),
    "conv_transpose_k4": ("x4", lambda x: slim.conv2d_transpose(x, 2, 4, stride=2)),
    "conv_transpose_k5s3": (
        "x4",
        lambda x: slim.conv2d_transpose(x, 2, [5, 2], stride=3, activation_fn=None),
    ),
    "fc_ln": (
        "x2",
        lambda x: slim.fully_connected(x, 5, normalizer_fn=slim.layer_norm),
    ),
    "bn_4d_unfused": (
        "x4",
        lambda x: slim.batch_norm(x, scale=True, decay=0.9, fused=False),
    ),
    "bn_2d_unfused_in_place": (
        "x2",
        lambda x: slim.batch_norm(x, fused=False, scale=True, **bn_in_place(decay=0.9)),
    ),
    "bn_params": (
        "x2",
        lambda x: slim.batch_norm(
            x,
            scale=True,
            param_initializers={"moving_variance": tf1.constant_initializer(2.0)},
            param_regularizers={"gamma": slim.l2_regularizer(0.5)},
            activation_fn=tf.nn.relu,
            is_training=False,
        ),
    ),
    "net": ("x4", net),
}


def _value(name, shape, rng):
    if name.endswith(("moving_variance", "gamma")):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)


def run_case(name, input_name, build, out):
    rng = np.random.default_rng(sorted(CASES).index(name))
    graph = tf.Graph()
    with graph.as_default():
        x_value = rng.standard_normal(SHAPES[input_name]).astype(np.float32)
        x = tf1.placeholder(tf.float32, x_value.shape)
        ys = build(x)
        ys = ys if isinstance(ys, tuple) else (ys,)
        variables = tf1.global_variables()
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        reg = tf1.losses.get_regularization_losses()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            before = {}
            for v in variables:
                name_ = v.op.name
                before[name_] = _value(name_, v.shape.as_list(), rng)
                v.load(before[name_], sess)
            fetched = sess.run([list(ys), updates], {x: x_value})[0]
            reg_value = sess.run(tf1.add_n(reg)) if reg else None
            after = {v.op.name: sess.run(v) for v in variables}
            if name == "net":
                saver = tf1.train.Saver()
                (HERE / "net_ckpt").mkdir(exist_ok=True)
                saver.save(
                    sess, str(HERE / "net_ckpt" / "model.ckpt"), write_meta_graph=False
                )
                # The state file with a relative path, as a moved directory has.
                (HERE / "net_ckpt" / "checkpoint").write_text(
                    'model_checkpoint_path: "model.ckpt"\n'
                    'all_model_checkpoint_paths: "model.ckpt"\n'
                )
    out[f"{name}/names"] = np.array([v.op.name for v in variables], dtype=np.str_)
    out[f"{name}/x"] = x_value
    for i, y in enumerate(fetched):
        out[f"{name}/y{i}"] = y
    for key, value in before.items():
        out[f"{name}/var/{key}"] = value
    for key, value in after.items():
        out[f"{name}/after/{key}"] = value
    if reg_value is not None:
        out[f"{name}/reg"] = np.float32(reg_value)


def main():
    out: dict[str, np.ndarray] = {}
    for name, (input_name, build) in CASES.items():
        run_case(name, input_name, build, out)
    np.savez_compressed(HERE / "cases.npz", **out)
    print(f"{len(CASES)} cases, {len(out)} arrays -> {HERE / 'cases.npz'}")
    print(f"tensorflow {tf.__version__}")


if __name__ == "__main__":
    main()
