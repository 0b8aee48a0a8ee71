"""`summary`: a table of a function's variables from a shape-only init.

Given sharding rules, each row also shows the variable's `PartitionSpec` (from
`js.partition_specs`) and the bytes one device holds of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jscope._src import run, tree
from jscope._src.sharding import ShardingRules


class Row(NamedTuple):
    """One variable of a `Summary`."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    collection: str
    count: int  # pyright: ignore[reportIncompatibleMethodOverride] (the API's name)
    bytes: int
    spec: Any = None  # its PartitionSpec, when the summary was given rules
    device_bytes: int | None = None  # bytes of its shard on one device, likewise


def _spec_text(spec: Any) -> str:
    """``P(None, 'model')``: a spec as it is written in code."""
    return "P(" + ", ".join(repr(entry) for entry in spec) + ")"


def _shard_bytes(shape: tuple[int, ...], spec: Any, mesh: Any, itemsize: int) -> int:
    """Bytes of one device's shard of an array of ``shape`` laid out by ``spec``."""
    sizes = dict(mesh.shape)
    shard = list(shape)
    for i, entry in enumerate(spec):
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        ways = math.prod(sizes[name] for name in names)
        shard[i] = -(-shard[i] // ways)  # a ceiling: XLA pads uneven shards
    return math.prod(shard) * itemsize


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
    A summary made with sharding rules has two more columns: each variable's
    ``spec`` and the bytes of its shard on one device (``bytes/device``).

    Attributes:
      rows: The variables.
      depth: How many leading path components group the subtotals.
      mesh: The rules' mesh, or None for a summary made without rules.
    """

    __module__ = "jscope"

    def __init__(self, rows: list[Row], depth: int = 1, mesh: Any = None):
        self.rows = rows
        self.depth = depth
        self.mesh = mesh

    @property
    def sharded(self) -> bool:
        """Whether the rows carry specs and per-device bytes (rules were given)."""
        return self.mesh is not None

    @property
    def total_count(self) -> int:
        """Number of scalars in every variable."""
        return sum(r.count for r in self.rows)

    @property
    def total_bytes(self) -> int:
        """Bytes of every variable."""
        return sum(r.bytes for r in self.rows)

    @property
    def total_device_bytes(self) -> int | None:
        """Bytes of every variable's shard on one device (None without rules)."""
        if not self.sharded:
            return None
        return sum(r.device_bytes or 0 for r in self.rows)

    def _scope(self, path: str) -> str:
        parts = path.split("/")
        return "/".join(parts[: min(self.depth, len(parts) - 1)]) or "(root)"

    def subtotals(self) -> dict[str, tuple[int, int]]:
        """``{scope: (count, bytes)}`` per scope of ``depth`` path components."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.rows:
            scope = self._scope(r.path)
            c, b = out.get(scope, (0, 0))
            out[scope] = (c + r.count, b + r.bytes)
        return out

    def device_subtotals(self) -> dict[str, int]:
        """``{scope: bytes on one device}``, as `subtotals` (empty without rules)."""
        out: dict[str, int] = {}
        if self.sharded:
            for r in self.rows:
                scope = self._scope(r.path)
                out[scope] = out.get(scope, 0) + (r.device_bytes or 0)
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
        if self.sharded:
            header += ["spec", "bytes/device"]
            for row, r in zip(body, self.rows, strict=True):
                row += [_spec_text(r.spec), _human(r.device_bytes or 0)]
            per_device = [*self.device_subtotals().values(), self.total_device_bytes]
            for row, b in zip(foot, per_device, strict=True):
                row += ["", _human(b or 0)]
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
            right = h in ("params", "bytes", "bytes/device")
            table.add_column(h, justify="right" if right else "left")
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
        per_device = ""
        if self.sharded:
            per_device = f", {_human(self.total_device_bytes or 0)} per device"
        return (
            f"<js.Summary: {len(self.rows)} variables, {self.total_count:,} params, "
            f"{_human(self.total_bytes)}{per_device}>"
        )


def summary(
    fn: Callable[..., Any],
    rng: jax.Array | Mapping[str, jax.Array],
    *args: Any,
    depth: int = 1,
    rules: ShardingRules | None = None,
    **kwargs: Any,
) -> Summary:
    """Summarises the variables ``fn`` creates, from a shape-only init (no FLOPs).

    With ``rules`` (a `js.ShardingRules`), every row also gets the variable's
    ``spec`` (as `js.partition_specs` gives it) and ``bytes/device``, the bytes
    of its shard on one device of the rules' mesh; subtotals and the total get
    theirs too. A spec that does not fit raises, as `js.partition_specs` does.

    Args:
      fn: The function, as given to `js.init`.
      rng: A key, as for `js.init`.
      *args: Arguments for ``fn`` (arrays or `jax.ShapeDtypeStruct`).
      depth: Path components that group the subtotals (1: top-level scopes).
      rules: Optional `js.ShardingRules`: add the spec and per-device columns.
      **kwargs: Keyword arguments for ``fn``.

    Returns:
      A `Summary`; ``print(js.summary(...))`` shows the table.

    Raises:
      ShardingError: With ``rules``, a variable's spec does not fit it.

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
    specs, mesh = None, None
    if rules is not None:
        specs = run.partition_specs(fn, rng, *args, rules=rules, **kwargs)
        mesh = rules.mesh
    rows = []
    for coll, path in order:
        leaf = _at(shapes, coll, path)
        count = math.prod(leaf.shape)
        dtype = np.dtype(leaf.dtype)
        row = Row(
            path, tuple(leaf.shape), dtype.name, coll, count, count * dtype.itemsize
        )
        if specs is not None:
            spec = _at(specs, coll, path)
            nbytes = _shard_bytes(row.shape, spec, mesh, dtype.itemsize)
            row = row._replace(spec=spec, device_bytes=nbytes)
        rows.append(row)
    return Summary(rows, depth, mesh)


def _at(nested: Mapping[str, Any], collection: str, path: str) -> Any:
    leaf = nested[collection]
    for part in path.split("/"):
        leaf = leaf[part]
    return leaf
