"""`summary`: a table of a function's variables from a shape-only init."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jscope._src import run, tree


class Row(NamedTuple):
    """One variable of a `Summary`."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    collection: str
    count: int
    bytes: int


def _human(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


class Summary:
    """The variables of a function: path, shape, dtype, collection, size.

    Print it (plain text), call `to_markdown` for logs, or `print_rich` for a
    terminal table. ``rows`` holds one `Row` per variable, in creation order.

    Attributes:
      rows: The variables.
      depth: How many leading path components group the subtotals.
    """

    __module__ = "jscope"

    def __init__(self, rows: list[Row], depth: int = 1):
        self.rows = rows
        self.depth = depth

    @property
    def total_count(self) -> int:
        """Number of scalars in every variable."""
        return sum(r.count for r in self.rows)

    @property
    def total_bytes(self) -> int:
        """Bytes of every variable."""
        return sum(r.bytes for r in self.rows)

    def subtotals(self) -> dict[str, tuple[int, int]]:
        """``{scope: (count, bytes)}`` per scope of ``depth`` path components."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.rows:
            parts = r.path.split("/")
            scope = "/".join(parts[: min(self.depth, len(parts) - 1)]) or "(root)"
            c, b = out.get(scope, (0, 0))
            out[scope] = (c + r.count, b + r.bytes)
        return out

    def _table(self) -> tuple[list[str], list[list[str]], list[list[str]]]:
        header = ["path", "shape", "dtype", "collection", "params", "bytes"]
        body = [
            [
                r.path,
                str(r.shape),
                r.dtype,
                r.collection,
                f"{r.count:,}",
                _human(r.bytes),
            ]
            for r in self.rows
        ]
        foot = [
            [f"{scope}/" if scope != "(root)" else "(root)", "", "", "",
             f"{c:,}", _human(b)]
            for scope, (c, b) in self.subtotals().items()
        ]  # fmt: skip
        foot.append(
            ["total", "", "", "", f"{self.total_count:,}", _human(self.total_bytes)]
        )
        return header, body, foot

    def to_text(self) -> str:
        """The table as aligned plain text."""
        header, body, foot = self._table()
        lines = [header, *body, *foot]
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]

        def fmt(row):
            return "  ".join(
                c.ljust(w) for c, w in zip(row, widths, strict=True)
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(header), rule, *map(fmt, body), rule, *map(fmt, foot)])

    def to_markdown(self) -> str:
        """The table as GitHub markdown."""
        header, body, foot = self._table()
        out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in [*body, *foot]:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        return "\n".join(out)

    def __rich__(self) -> Any:
        from rich.table import Table  # noqa: PLC0415 (optional dependency)

        header, body, foot = self._table()
        table = Table(title="jscope summary")
        for h in header:
            table.add_column(h, justify="right" if h in ("params", "bytes") else "left")
        for row in body:
            table.add_row(*row)
        table.add_section()
        for row in foot:
            table.add_row(*row, style="bold")
        return table

    def print_rich(self) -> None:
        """Prints the table with rich (falls back to plain text without rich)."""
        try:  # optional dependency; __rich__ needs rich.table too
            from rich.console import Console  # noqa: PLC0415
            from rich.table import Table  # noqa: F401, PLC0415
        except ImportError:
            print(self.to_text())
            return
        Console().print(self)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (
            f"<js.Summary: {len(self.rows)} variables, {self.total_count:,} params, "
            f"{_human(self.total_bytes)}>"
        )


def summary(
    fn: Callable[..., Any],
    rng: jax.Array | Mapping[str, jax.Array],
    *args: Any,
    depth: int = 1,
    **kwargs: Any,
) -> Summary:
    """Summarises the variables ``fn`` creates, from a shape-only init (no FLOPs).

    Args:
      fn: The function, as given to `js.init`.
      rng: A key, as for `js.init`.
      *args: Arguments for ``fn`` (arrays or `jax.ShapeDtypeStruct`).
      depth: Path components that group the subtotals (1: top-level scopes).
      **kwargs: Keyword arguments for ``fn``.

    Returns:
      A `Summary`; ``print(js.summary(...))`` shows the table.

    Example:
      >>> import jax, jax.numpy as jnp, jscope as js
      >>> def f(x):
      ...     with js.variable_scope("dense"):
      ...         w = js.get_variable("kernel", (x.shape[-1], 3))
      ...     return x @ w
      >>> s = js.summary(f, jax.random.key(0), jnp.ones((1, 2)))
      >>> s.total_count, s.rows[0].path, s.rows[0].collection
      (6, 'dense/kernel', 'params')
      >>> print(s)  # doctest: +NORMALIZE_WHITESPACE
      path          shape   dtype    collection  params  bytes
      ------------  ------  -------  ----------  ------  -----
      dense/kernel  (2, 3)  float32  params      6       24 B
      ------------  ------  -------  ----------  ------  -----
      dense/        6       24 B
      total         6       24 B
    """
    # Arrays and ShapeDtypeStructs go through eval_shape as abstract values; other
    # arguments (ints, strings, flags) stay static.
    is_array = [
        isinstance(a, jax.Array | np.ndarray | jax.ShapeDtypeStruct) for a in args
    ]
    dynamic = [a for a, d in zip(args, is_array, strict=True) if d]

    order: list[tuple[str, str]] = []  # (collection, path) in creation order

    def init_shapes(key, dyn):
        it = iter(dyn)
        full = [next(it) if d else a for a, d in zip(args, is_array, strict=True)]
        variables = run.init(fn, key, *full, **kwargs)
        order[:] = [(c, p) for c in variables for p in tree.flatten(variables[c])]
        return variables

    shapes = jax.eval_shape(init_shapes, rng, dynamic)
    rows = []
    for coll, path in order:
        leaf = shapes[coll]
        for part in path.split("/"):
            leaf = leaf[part]
        count = math.prod(leaf.shape)
        dtype = np.dtype(leaf.dtype)
        rows.append(
            Row(
                path, tuple(leaf.shape), dtype.name, coll, count, count * dtype.itemsize
            )
        )
    return Summary(rows, depth)
