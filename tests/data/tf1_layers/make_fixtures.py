"""Makes the fixtures of tests/layers/test_layers_tf1.py and tests/test_ema.py.

Run once, by hand, with TensorFlow and its legacy Keras (``tf.compat.v1.layers``
needs ``tf_keras`` under Keras 3); the tests never import TensorFlow::

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tf_keras
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tests/data/tf1_layers/make_fixtures.py

Each case is a TF1 graph-mode program built with ``tf.compat.v1.layers.*`` (or
``tf.compat.v1.train.ExponentialMovingAverage``) and run in a session. It is
stored beside this script as ``<case>.npz`` holding:

- ``names``: the global variables' names, in creation order (``dense/kernel``,
  without TF's ``:0``);
- ``var/<name>``: each variable's initial value (random, so that every weight
  matters);
- ``input`` (and ``input_<i>`` for more), ``output`` (and ``output_<i>``);
- ``after/<name>``: a variable's value after the case's update step (moving
  statistics after a training step, averages after ``ema.apply``), when it has
  one.

``manifest.json`` lists the cases with their arguments and TensorFlow's version.
"""

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1
tf1.disable_eager_execution()
HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
MANIFEST = {"tensorflow": tf.__version__, "cases": {}}


def _randomize(sess):
    """Gives every variable a random value (keeps variances positive)."""
    values = {}
    for v in tf1.global_variables():
        name = v.op.name
        shape = v.shape.as_list()
        if "variance" in name:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(size=shape) * 0.5
        value = value.astype(v.dtype.as_numpy_dtype)
        v.load(value, sess)
        values[name] = value
    return values


def _save(case, args, stored):
    np.savez(os.path.join(HERE, f"{case}.npz"), **stored)
    MANIFEST["cases"][case] = args


def layer_case(case, build, input_shape, args, *, train_step=False, twin=None):
    """One layer call ``build(x)`` on a random input, weights randomized.

    With ``train_step``, ``build(x)`` returns ``(y_eval, y_train)``: the layer
    in inference then training mode; the update ops run with ``y_train``.

    ``twin(x)``, for a ``channels_first`` layer, is the same layer (``reuse=True``)
    in ``channels_last`` on the transposed input, transposed back: TensorFlow's
    CPU kernels refuse NCHW for most of these ops ("only supported for NHWC
    format"), so the output recorded is the twin's when the layer itself cannot
    run. The variables (names, shapes, values) are the ``channels_first``
    layer's all the same.
    """
    graph = tf1.Graph()
    with graph.as_default():
        x_value = rng.normal(size=input_shape).astype(np.float32) * 2 + 0.5
        x = tf1.placeholder(tf.float32, input_shape)
        out = build(x)
        names = [v.op.name for v in tf1.global_variables()]
        out_twin = twin(x) if twin is not None else None
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            values = _randomize(sess)
            stored = {"names": np.array(names), "input": x_value}
            stored.update({f"var/{n}": values[n] for n in names})
            if train_step:
                y_eval, y_train = out
                stored["output"] = sess.run(y_eval, {x: x_value})
                updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
                stored["output_train"] = sess.run([y_train, updates], {x: x_value})[0]
                for v in tf1.global_variables():
                    stored[f"after/{v.op.name}"] = sess.run(v)
            else:
                try:
                    stored["output"] = sess.run(out, {x: x_value})
                    args = dict(args, computed="directly")
                except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                    if out_twin is None:
                        raise
                    args = dict(args, computed="by the channels_last twin")
                if out_twin is not None:
                    y_twin = sess.run(out_twin, {x: x_value})
                    if "output" in stored:
                        np.testing.assert_allclose(stored["output"], y_twin, 1e-5, 1e-5)
                    stored["output"] = y_twin
    _save(case, args, stored)


def _nchw_twin(fn, n, **kw):
    """``fn`` in channels_last on NC... inputs, transposed there and back."""
    to_last = (0, *range(2, n + 2), 1)
    to_first = (0, n + 1, *range(1, n + 1))

    def twin(x):
        y = fn(tf.transpose(x, to_last), data_format="channels_last", **kw)
        return tf.transpose(y, to_first)

    return twin


def layer_cases():
    L = tf1.layers
    sep = dict(filters=5, kernel_size=3, depth_multiplier=2)
    layer_case(
        "separable_conv2d_same",
        lambda x: L.separable_conv2d(x, padding="same", **sep),
        (2, 6, 7, 3),
        dict(sep, padding="same"),
    )
    layer_case(
        "separable_conv2d_strided",
        lambda x: L.separable_conv2d(
            x, 4, (3, 2), strides=2, padding="valid", activation=tf.nn.relu
        ),
        (2, 7, 8, 3),
        dict(filters=4, kernel_size=(3, 2), strides=2, padding="valid", relu=True),
    )
    layer_case(
        "separable_conv2d_dilated_nobias",
        lambda x: L.separable_conv2d(
            x, 3, 3, dilation_rate=2, padding="same", use_bias=False, name="sep"
        ),
        (1, 9, 9, 2),
        dict(filters=3, kernel_size=3, dilation_rate=2, padding="same",
             use_bias=False, name="sep"),
    )  # fmt: skip

    def channels_first(case, fn, n, input_shape, name=None, **kw):
        """``fn`` with data_format="channels_first", and its channels_last twin."""
        reuse = {} if name is None else dict(name=name, reuse=True)
        layer_case(
            case,
            lambda x: fn(x, data_format="channels_first", name=name, **kw),
            input_shape,
            dict(kw, data_format="channels_first"),
            twin=_nchw_twin(fn, n, **reuse, **kw),
        )

    channels_first(
        "separable_conv2d_channels_first", L.separable_conv2d, 2, (2, 3, 6, 5),
        name="separable_conv2d", filters=4, kernel_size=3, padding="same",
        depth_multiplier=2,
    )  # fmt: skip
    channels_first(
        "conv1d_channels_first", L.conv1d, 1, (2, 3, 7), name="conv1d",
        filters=4, kernel_size=3, padding="same",
    )  # fmt: skip
    channels_first(
        "conv2d_channels_first", L.conv2d, 2, (2, 3, 7, 6), name="conv2d",
        filters=4, kernel_size=3, strides=2, padding="same",
    )  # fmt: skip
    channels_first(
        "conv3d_channels_first", L.conv3d, 3, (1, 3, 4, 4, 3), name="conv3d",
        filters=2, kernel_size=2,
    )  # fmt: skip
    channels_first(
        "conv2d_transpose_channels_first", L.conv2d_transpose, 2, (2, 3, 4, 5),
        name="conv2d_transpose", filters=4, kernel_size=3, strides=2,
        padding="same",
    )  # fmt: skip
    for kind, fn in (("max", L.max_pooling2d), ("average", L.average_pooling2d)):
        channels_first(
            f"{kind}_pooling2d_channels_first", fn, 2, (2, 3, 7, 6),
            pool_size=3, strides=2, padding="same",
        )  # fmt: skip
    channels_first(
        "max_pooling1d_channels_first", L.max_pooling1d, 1, (2, 3, 7),
        pool_size=2, strides=2,
    )  # fmt: skip
    channels_first(
        "average_pooling3d_channels_first", L.average_pooling3d, 3, (1, 2, 3, 4, 4),
        pool_size=2, strides=1,
    )  # fmt: skip

    def bn(**kw):
        def build(x):
            y_eval = L.batch_normalization(x, training=False, name="bn", **kw)
            y_train = L.batch_normalization(
                x, training=True, name="bn", reuse=True, **kw
            )
            return y_eval, y_train

        return build

    for case, shape, kw in (
        # fused=None: TF1 fuses 4-D inputs with axis 1 or 3 (unbiased variance).
        ("batch_normalization_nhwc", (4, 3, 5, 6), {}),
        ("batch_normalization_nchw", (4, 6, 3, 5), dict(axis=1)),
        # Not fusable, or not fused: the biased variance.
        ("batch_normalization_2d", (8, 5), {}),
        ("batch_normalization_nhwc_unfused", (4, 3, 5, 6), dict(fused=False)),
        ("batch_normalization_3d_axis1", (4, 5, 3), dict(axis=1)),
        (
            "batch_normalization_momentum",
            (4, 3, 5, 6),
            dict(momentum=0.9, epsilon=1e-2, center=False),
        ),
    ):
        layer_case(case, bn(**kw), shape, kw, train_step=True)


def ema_case():
    """``ExponentialMovingAverage`` over two variables, three updates."""
    for case, kw in (
        ("ema", dict(decay=0.9)),
        ("ema_num_updates", dict(decay=0.999)),
    ):
        graph = tf1.Graph()
        with graph.as_default():
            with tf1.variable_scope("net"):
                w = tf1.get_variable("w", (2, 3), tf.float32)
                b = tf1.get_variable("b", (3,), tf.float32)
            step = tf1.placeholder(tf.int64, ())
            num_updates = step if case == "ema_num_updates" else None
            ema = tf1.train.ExponentialMovingAverage(num_updates=num_updates, **kw)
            update = ema.apply([w, b])
            names = [v.op.name for v in tf1.global_variables()]
            stored = {"names": np.array(names)}
            stored["average_names"] = np.array(
                [ema.average_name(w), ema.average_name(b)]
            )
            with tf1.Session(graph=graph) as sess:
                sess.run(tf1.global_variables_initializer())
                for v in (w, b):
                    value = rng.normal(size=v.shape.as_list()).astype(np.float32)
                    v.load(value, sess)
                    # The averages start at the variables' initial values.
                    ema.average(v).load(value, sess)
                    stored[f"var/{v.op.name}"] = value
                steps = [0, 5, 100]
                for i, n in enumerate(steps):
                    for v in (w, b):
                        new = rng.normal(size=v.shape.as_list()).astype(np.float32)
                        v.load(new, sess)
                        stored[f"step{i}/{v.op.name}"] = new
                    sess.run(update, {step: n})
                    for v in (w, b):
                        avg = sess.run(ema.average(v))
                        stored[f"step{i}/{ema.average_name(v)}"] = avg
            _save(case, dict(kw, steps=steps, with_num_updates=num_updates is not None),
                  stored)  # fmt: skip


if __name__ == "__main__":
    layer_cases()
    ema_case()
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", len(MANIFEST["cases"]), "cases with TensorFlow", tf.__version__)
