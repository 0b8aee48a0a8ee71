"""Trains the TF1 model of examples/port_tf1.py with real TensorFlow, once.

Run it in a virtualenv with TensorFlow and scikit-learn (the example and its
tests never import TensorFlow)::

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu scikit-learn
    /tmp/tfvenv/bin/python examples/data/make_port_tf1.py

The model is TF1 code as a tutorial wrote it: ``tf.compat.v1`` graph mode,
``tf.get_variable`` under ``tf.variable_scope``, a hand-written batch norm whose
moving averages are updated by ``tf.assign`` ops in ``UPDATE_OPS``, a training
tower and an evaluation tower that shares its variables (``reuse=True``), Adam,
a ``global_step``, and ``tf.train.Saver``. It trains 300 steps on scikit-learn's
digits and writes, under ``examples/data/port_tf1/``:

- ``checkpoint``, ``model.ckpt-300.index``, ``model.ckpt-300.data-00000-of-00001``:
  what ``tf.train.Saver(save_relative_paths=True)`` wrote (the model's
  variables, Adam's slots, ``beta1_power``, ``beta2_power``, ``global_step``);
- ``tf1_outputs.npz``: a fixed batch (the first 32 held-out images and their
  labels) and what TensorFlow computed on it from the saved weights: the
  evaluation tower's logits, the training tower's logits (batch statistics) and
  the moving averages after one run of the update ops on that batch
  (``updated/<variable name>``);
- ``tf1_run.json``: the TensorFlow version, the training settings, the
  checkpoint's variable names and the held-out accuracy TensorFlow measured.
"""

import json
import os
import shutil

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "port_tf1")
STEPS, BATCH, LR, SEED = 300, 64, 1e-3, 0

tf1 = tf.compat.v1
tf1.disable_eager_execution()


# ---------------------------------------------------------------------- data
# As examples/port_tf1.py loads them: images [n, 8, 8, 1] in [0, 1], 20 % held out.


def load_data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(SEED).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


# --------------------------------------------------------------------- model
# The TF1 code that examples/port_tf1.py ports line by line.


def batch_norm(x, training, decay=0.9, epsilon=1e-3):
    with tf1.variable_scope("bn"):
        channels = x.shape[-1]
        beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
        gamma = tf1.get_variable(
            "gamma", [channels], initializer=tf1.ones_initializer()
        )
        moving_mean = tf1.get_variable(
            "moving_mean",
            [channels],
            initializer=tf1.zeros_initializer(),
            trainable=False,
        )
        moving_variance = tf1.get_variable(
            "moving_variance",
            [channels],
            initializer=tf1.ones_initializer(),
            trainable=False,
        )
        if training:
            mean, variance = tf.nn.moments(x, [0, 1, 2])
            for var, batch in ((moving_mean, mean), (moving_variance, variance)):
                update = tf1.assign(var, decay * var + (1 - decay) * batch)
                tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
        else:
            mean, variance = moving_mean, moving_variance
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)


def conv_layer(x, filters, training, scope):
    with tf1.variable_scope(scope):
        w = tf1.get_variable(
            "weights",
            [3, 3, x.shape[-1], filters],
            initializer=tf1.truncated_normal_initializer(stddev=0.1),
        )
        h = tf.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME")
        h = tf.nn.relu(batch_norm(h, training))
        return tf.nn.max_pool2d(h, ksize=2, strides=2, padding="SAME")


def fc_layer(x, units, scope):
    with tf1.variable_scope(scope):
        w = tf1.get_variable(
            "weights",
            [x.shape[-1], units],
            initializer=tf1.truncated_normal_initializer(stddev=0.1),
        )
        b = tf1.get_variable(
            "biases", [units], initializer=tf1.constant_initializer(0.1)
        )
        return tf.matmul(x, w) + b


def model(images, training):
    h = conv_layer(images, 16, training, "conv1")  # [n, 4, 4, 16]
    h = conv_layer(h, 32, training, "conv2")  # [n, 2, 2, 32]
    h = tf.reshape(h, [-1, 2 * 2 * 32])
    h = tf.nn.relu(fc_layer(h, 64, "fc1"))
    return fc_layer(h, 10, "logits")


# ---------------------------------------------------------------------- main


def main():
    x_train, y_train, x_test, y_test = load_data()
    tf1.set_random_seed(SEED)
    images = tf1.placeholder(tf.float32, [None, 8, 8, 1], name="images")
    labels = tf1.placeholder(tf.int32, [None], name="labels")
    with tf1.variable_scope("model"):
        train_logits = model(images, training=True)
    with tf1.variable_scope("model", reuse=True):  # the eval tower shares them
        eval_logits = model(images, training=False)
    loss = tf1.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=train_logits
        )
    )
    global_step = tf1.train.get_or_create_global_step()
    update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
    with tf1.control_dependencies(update_ops):
        train_op = tf1.train.AdamOptimizer(LR).minimize(loss, global_step=global_step)
    saver = tf1.train.Saver(max_to_keep=1, save_relative_paths=True)

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    rng = np.random.default_rng(SEED)
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for step in range(1, STEPS + 1):
            batch = rng.choice(len(x_train), BATCH, replace=False)
            feed = {images: x_train[batch], labels: y_train[batch]}
            value, _ = sess.run([loss, train_op], feed)
            if step % 50 == 0:
                print(f"step {step:3d}  loss {value:.4f}")
        prefix = saver.save(
            sess, os.path.join(OUT, "model.ckpt"), global_step, write_meta_graph=False
        )
        print("saved", prefix)

        held_out = sess.run(eval_logits, {images: x_test})
        correct = int(np.sum(held_out.argmax(-1) == y_test))
        print(f"held-out accuracy {correct}/{len(y_test)}")

        fixed = {images: x_test[:32], labels: y_test[:32]}
        outputs = {"images": x_test[:32], "labels": y_test[:32]}
        outputs["eval_logits"], outputs["train_logits"] = sess.run(
            [eval_logits, train_logits], fixed
        )
        sess.run(update_ops, fixed)  # after the save: the checkpoint is untouched
        moving = [
            v
            for v in tf1.global_variables()
            if v.op.name.endswith(("_mean", "_variance"))
        ]
        for v, value in zip(moving, sess.run(moving), strict=True):
            outputs[f"updated/{v.op.name}"] = value
    np.savez(os.path.join(OUT, "tf1_outputs.npz"), **outputs)

    names = [name for name, _ in tf.train.list_variables(prefix)]
    run = {
        "tensorflow": tf.__version__,
        "steps": STEPS,
        "batch": BATCH,
        "learning_rate": LR,
        "optimizer": "tf.compat.v1.train.AdamOptimizer",
        "checkpoint": os.path.basename(prefix),
        "variables": names,
        "held_out_correct": correct,
        "held_out_total": len(y_test),
    }
    with open(os.path.join(OUT, "tf1_run.json"), "w", encoding="utf-8") as f:
        json.dump(run, f, indent=1)
        f.write("\n")
    print(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
