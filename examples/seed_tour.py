"""A tour of TF1's variables, sharing and scoping, ported to jscope.

Each numbered section below is one program from the classic TF1 walk-through of
`tf.Variable`, `tf.get_variable` and `tf.variable_scope`, rewritten with jscope's
public API. TF1 built a graph and ran it in a session; jscope runs a plain Python
function with `js.init` (which creates the variables and returns their initial
values as a nested dict) and `js.apply` (which reads them from such a dict).

Run it with:

    python examples/seed_tour.py
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Sequence

import _cli
import jax
import jax.numpy as jnp

import jscope as js

# A small batch is enough: the layers have TF1's 784 -> 500 shapes, the batch is 4.
BATCH = 4

# Every variable tree the tour creates, with the section that created it.
_CREATED: list[tuple[int, dict]] = []


def section(number: int, title: str, summary: str) -> None:
    """Prints a section heading and a one-line summary."""
    print()
    print(f"{number}. {title}")
    print("-" * (len(title) + len(str(number)) + 2))
    print(textwrap.fill(summary, width=88))


def record(number: int, variables: dict) -> dict:
    """Remembers a section's variable tree for the closing table."""
    _CREATED.append((number, variables))
    return variables


def show_paths(variables: dict) -> None:
    """Prints the variables of a tree, one `collection/path` per line."""
    for path, value in js.flatten(variables).items():
        print(f"   {path:<24} {str(tuple(value.shape)):<12} {value.dtype}")


# ----------------------------------------------------------------- 1. variables


def seed_variables():
    """TF1's first program: a weight matrix, a bias vector and a step counter.

    `js.Variable` takes a value, or a callable `(key) -> array` that receives a
    key derived from the variable's path (so it is random but reproducible).
    """
    weights = js.Variable(
        lambda key: js.initializers.random_normal(stddev=0.1)(key, (784, 100)),
        name="W",
    )
    biases = js.Variable(jnp.zeros([100]), name="b")
    counter = js.Variable(0, name="counter")  # a Python int: int32, kept in "state"
    return weights, biases, counter


def read_biases():
    _, biases, _ = seed_variables()
    return biases.value


def increment():
    _, _, counter = seed_variables()
    return js.assign(counter, counter + 1)


def create_and_read() -> dict:
    section(
        1,
        "Creating variables and reading one back",
        "js.init runs the function once and returns every initial value in a "
        "plain dict; js.apply reads them back.",
    )
    variables = record(1, js.init(read_biases, jax.random.key(0)))
    show_paths(variables)
    b = js.apply(read_biases, variables)
    print(f"   b[:5] = {b[:5]}  shape = {b.shape}")
    return variables


# ------------------------------------------------------------------- 2. counter


def count_to_ten(variables: dict) -> dict:
    section(
        2,
        "Incrementing the counter ten times",
        "Assignments come back from js.apply as a new tree when their collection "
        "is mutable; each step feeds the previous tree back in.",
    )
    step = jax.jit(lambda v: js.apply(increment, v, mutable=["state"]))
    for _ in range(10):
        count, variables = step(variables)
        print(f"   counter = {int(count)}")
    print(f"   the tree now holds state/counter = {int(variables['state']['counter'])}")
    return variables


# ------------------------------------------------------------- 3. checkpoints


def save_and_restore(variables: dict) -> None:
    section(
        3,
        "Saving and restoring variables",
        "js.Saver writes the tree as an Orbax checkpoint and restore returns a new "
        "tree; a dict var list saves a subset under new checkpoint keys.",
    )
    with tempfile.TemporaryDirectory() as ckpt_dir:
        # Save every variable (keys are full paths), as TF1's tf.train.Saver().
        saver = js.Saver()
        save_path = saver.save(variables, os.path.join(ckpt_dir, "model.ckpt"))
        assert save_path is not None  # None only for an empty Saver(allow_empty=True)
        print(f"   saved to       {os.path.relpath(save_path, ckpt_dir)}")
        latest = js.latest_checkpoint(ckpt_dir)
        assert latest is not None  # the checkpoint just saved
        for key, shape in js.list_variables(latest):
            print(f"   checkpoint key {key:<16} shape {shape}")

        # Restore into a fresh tree (other initial values, counter 0): every
        # variable comes back as saved, the counter as 10.
        fresh = js.init(increment, jax.random.key(1))
        print(f"   fresh counter    = {int(fresh['state']['counter'])}")
        restored = saver.restore(latest, fresh)
        same = jnp.array_equal(restored["params"]["W"], variables["params"]["W"])
        print(f"   restored counter = {int(restored['state']['counter'])}")
        print(f"   restored params/W equals the saved one: {bool(same)}")

        # Restore without running any initializer: the target is shapes only.
        shapes = jax.eval_shape(lambda k: js.init(increment, k), jax.random.key(0))
        counter = saver.restore(latest, shapes)["state"]["counter"]
        print(f"   restored from shapes only: counter = {int(counter)}")

        # Save a subset under a new name: tf.train.Saver({"my_counter": counter}).
        subset = js.Saver({"my_counter": "state/counter"})
        subset_path = subset.save(variables, os.path.join(ckpt_dir, "counter.ckpt"))
        assert subset_path is not None
        print(f"   subset checkpoint holds {js.list_variables(subset_path)}")
        restored = subset.restore(subset_path, fresh)
        counter = int(restored["state"]["counter"])
        kept = jnp.array_equal(restored["params"]["W"], fresh["params"]["W"])
        print(f"   my_counter restored into state/counter = {counter}")
        print(f"   params/W keeps the fresh tree's value: {bool(kept)}")


# ------------------------------------------------------- 4. Variable is always new


def two_variables_one_name():
    v1 = js.Variable(10, name="name1")
    v2 = js.Variable(10, name="name1")
    return v1 is not v2, v1.name, v2.name


def variable_always_creates() -> None:
    section(
        4,
        "js.Variable always creates a new variable",
        "Asking twice for the same name gives two variables; the second name gets "
        "a numeric suffix.",
    )
    (different, name1, name2), variables = js.init_with_output(
        two_variables_one_name, jax.random.key(0)
    )
    record(4, variables)
    print(f"   v1.name = {name1}")
    print(f"   v2.name = {name2}")
    print(f"   v1 is not v2: {different}")


# ------------------------------------------------- 5. affine layers with Variable


def affine(x, shape):
    W = js.Variable(lambda key: js.initializers.truncated_normal()(key, shape))
    b = js.Variable(jnp.zeros([shape[1]]))
    return jax.nn.relu(x @ W + b)


def two_affine_layers(x):
    with js.variable_scope("n1"):
        n1 = affine(x, [784, 500])
    with js.variable_scope("n1"):
        n2 = affine(x, [784, 500])
    return n1, n2


def affine_with_variable(x) -> None:
    section(
        5,
        "Calling a js.Variable layer twice makes two layers",
        "Reopening scope n1 opens a new name scope n1_1, and js.Variable names "
        "follow name scopes, so the second call gets its own W and b.",
    )
    variables = record(5, js.init(two_affine_layers, jax.random.key(0), x))
    show_paths(variables)
    n1, n2 = js.apply(two_affine_layers, variables, x)
    print(f"   outputs differ: {not bool(jnp.array_equal(n1, n2))}")


# ---------------------------------------------- 6. affine layers with get_variable


def affine_reuseable(x, shape):
    W = js.get_variable(
        "W", shape, initializer=js.initializers.random_normal_initializer()
    )
    b = js.get_variable(
        "b", [shape[1]], initializer=js.initializers.constant_initializer(0.0)
    )
    return jax.nn.relu(x @ W + b)


def shared_affine_layers(x):
    with js.variable_scope("n2"):
        nn1 = affine_reuseable(x, [784, 500])
    with js.variable_scope("n2", reuse=True):
        nn2 = affine_reuseable(x, [784, 500])
    return nn1, nn2


def affine_with_get_variable(x) -> None:
    section(
        6,
        "Sharing one layer with get_variable and reuse=True",
        "get_variable addresses a variable by scope path, so the second call under "
        "n2 with reuse=True finds the W and b the first call made.",
    )
    (nn1, nn2), variables = js.init_with_output(
        shared_affine_layers, jax.random.key(0), x
    )
    record(6, variables)
    show_paths(variables)
    print(f"   jnp.array_equal(nn1, nn2) = {bool(jnp.array_equal(nn1, nn2))}")
    nn1, nn2 = js.apply(shared_affine_layers, variables, x)
    print(f"   ... and again at apply    = {bool(jnp.array_equal(nn1, nn2))}")


# ------------------------------------------------------------- 7. reuse errors


def create_twice():
    with js.variable_scope("foo"):
        js.get_variable("v", [1])
        js.get_variable("v", [1])  # reuse is off and foo/v exists


def reuse_missing():
    with js.variable_scope("foo", reuse=True):
        js.get_variable("v", [1])  # reuse is on and foo/v was never created


def reuse_errors() -> None:
    section(
        7,
        "The two reuse mistakes",
        "Creating an existing variable, or reusing a missing one, raises a "
        "ValueError subclass whose message names the path.",
    )
    for fn in (create_twice, reuse_missing):
        try:
            js.init(fn, jax.random.key(0))
        except ValueError as e:
            print(f"   {fn.__name__}: {type(e).__name__}")
            print(f"      {e}")
        else:
            raise SystemExit(f"{fn.__name__} should have raised a ValueError")


# ----------------------------------------------------------- 8. correct reuse


def reuse_correctly():
    with js.variable_scope("foo"):
        v = js.get_variable("v2", [1])
    with js.variable_scope("foo", reuse=True):
        v1 = js.get_variable("v2", [1])
    by_flag = bool(jnp.all(v1 == v))

    with js.variable_scope("foo") as scope:
        v = js.get_variable("v3", [1])
        scope.reuse_variables()
        v1 = js.get_variable("v3", [1])
    by_method = bool(jnp.all(v1 == v))
    return by_flag, by_method


def correct_reuse() -> None:
    section(
        8,
        "Reusing on purpose",
        "Either reopen the scope with reuse=True, or call scope.reuse_variables() "
        "inside it; both hand back the variable made before.",
    )
    (by_flag, by_method), variables = js.init_with_output(
        reuse_correctly, jax.random.key(0)
    )
    record(8, variables)
    show_paths(variables)
    print(f"   reuse=True:               v1 == v is {by_flag}")
    print(f"   scope.reuse_variables():  v1 == v is {by_method}")


# -------------------------------------------------------------------- summary


def variable_rows() -> list[tuple[str, str, str, str, str]]:
    """One row per variable the tour created: section, path, shape, dtype, coll."""
    rows = []
    for number, variables in _CREATED:
        for key, value in js.flatten(variables).items():
            collection, path = key.split("/", 1)
            shape = str(tuple(value.shape))
            rows.append((str(number), path, shape, str(value.dtype), collection))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    headers = ("section", "path", "shape", "dtype", "collection")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("Variables created during the tour")
        widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(5)]
        for row in (headers, tuple("-" * w for w in widths), *rows):
            line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            print(line.rstrip())
        return
    table = Table(title="Variables created during the tour")
    for header in headers:
        table.add_column(header, justify="right" if header == "section" else "left")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    # No options: --help says what the tour is.
    _cli.parser(__doc__).parse_args(argv)
    print("jscope: a tour of TF1 variables, sharing and scoping")
    _CREATED.clear()
    x = jax.random.normal(jax.random.key(1), (BATCH, 784))
    variables = create_and_read()
    variables = count_to_ten(variables)
    save_and_restore(variables)
    variable_always_creates()
    affine_with_variable(x)
    affine_with_get_variable(x)
    reuse_errors()
    correct_reuse()
    print()
    print_table(variable_rows())
    return 0


if __name__ == "__main__":
    _cli.run(main)
