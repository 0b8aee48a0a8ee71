"""What the example scripts share: their options, a progress bar, Ctrl-C.

The examples run as ``python examples/<name>.py``, so this directory is on
``sys.path`` and they ``import _cli``.

- `parser` builds an ``argparse`` parser whose ``--help`` shows every option's
  help text and default.
- `progress` is a progress bar with the loss: rich's own
  `rich.progress.Progress` (the ``examples`` extra), else tqdm's, else nothing
  but the lines the script prints anyway. A bar is drawn only on a terminal.
- `run` calls a script's ``main`` and turns Ctrl-C into one line and exit code
  130; `interrupted` writes that line where a script knows what it can resume.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

# Exit code of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

# ------------------------------------------------------------------- options


class HelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Shows each option's default after its help text.

    A flag shows ``(default: off)``. An option whose default is None (it depends
    on other options) must say its default in its own help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or "(default" in text
            or action.default in (None, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        if isinstance(action.default, bool):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return text + " (default: %(default)s)"


def parser(doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring."""
    description = (doc or "").strip().split("\n\n")[0]
    return argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=HelpFormatter
    )


# ------------------------------------------------------------------ progress


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def rich_available() -> bool:
    """Whether rich (the ``examples`` extra) can be imported."""
    return _available("rich.progress")


class Bar:
    """A progress bar: ``update(done, loss=...)``, and ``write(line)`` above it."""

    def __init__(self, formats: Mapping[str, str]):
        self._formats = dict(formats)

    def status(self, values: Mapping[str, float]) -> str:
        """The fields as the bar shows them, e.g. ``"loss 1.2345"``."""
        return "  ".join(
            self._formats[k].format(v) for k, v in values.items() if k in self._formats
        )

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, done: int, **values: float) -> None:
        """Sets the number of finished steps and the fields shown beside them."""
        del done, values  # no bar: the lines the script writes say it all

    def write(self, line: str) -> None:
        """Prints a line to stdout, above the bar if one is drawn."""
        print(line, flush=True)


class _RichBar(Bar):
    def __init__(self, formats, total, completed, label, terminal):
        super().__init__(formats)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(force_terminal=terminal)
        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            # Not on a terminal rich would print the bar once, at the end.
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task(
            label, total=total, completed=completed, status=""
        )

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, done: int, **values: float) -> None:
        self._progress.update(self._task, completed=done, status=self.status(values))

    def write(self, line: str) -> None:
        # While the bar is live, rich redirects stdout above it.
        print(line, flush=True)


class _TqdmBar(Bar):
    def __init__(self, formats, total, completed, label, terminal):
        super().__init__(formats)
        from tqdm import tqdm

        self._tqdm = tqdm
        # disable=None: drawn only when stderr is a terminal, as tqdm decides.
        self._bar = tqdm(
            total=total,
            initial=completed,
            desc=label,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=None if terminal is None else not terminal,
        )

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, done: int, **values: float) -> None:
        self._bar.set_postfix_str(self.status(values), refresh=False)
        self._bar.update(done - self._bar.n)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()


def progress(
    total: int,
    *,
    completed: int = 0,
    label: str = "training",
    formats: Mapping[str, str] | None = None,
    show: bool = True,
    terminal: bool | None = None,
) -> Bar:
    """A progress bar of ``total`` steps, to use as a context manager.

    Rich's if it can be imported, else tqdm's, else a bar that draws nothing.

    Args:
      total: The number of steps (or epochs) when done.
      completed: How many are done already (a resumed run).
      label: Written before the bar.
      formats: How `Bar.update`'s fields are shown, e.g. ``{"loss": "loss
        {:.4f}"}`` (the default).
      show: False draws nothing (e.g. on all but the first process).
      terminal: None draws the bar only when the output is a terminal; True
        draws it anyway, False never.

    Example:
      with progress(steps) as bar:
          for step in range(1, steps + 1):
              loss = ...
              bar.update(step, loss=loss)
              bar.write(f"step {step}  loss {loss:.4f}")
    """
    formats = {"loss": "loss {:.4f}"} if formats is None else formats
    if not show or terminal is False:
        return Bar(formats)
    for module, kind in (("rich.progress", _RichBar), ("tqdm", _TqdmBar)):
        if _available(module):
            return kind(formats, total, completed, label, terminal)
    return Bar(formats)


# -------------------------------------------------------------------- Ctrl-C


def interrupted(at: str, resume_from: str | None) -> int:
    """Says where Ctrl-C stopped the run and how to go on; returns 130.

    Args:
      at: Where it stopped, e.g. ``"step 123"``.
      resume_from: Where ``--resume`` continues, e.g. ``"step 100"``; None when
        nothing was saved yet.
    """
    if resume_from is None:
        line = f"interrupted at {at}, before the first checkpoint; rerun to start again"
    else:
        line = (
            f"interrupted at {at}; rerun with --resume to continue from {resume_from}"
        )
    print(line, file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def run(main: Callable[[Sequence[str] | None], Any]) -> NoReturn:
    """Calls a script's ``main`` and exits with its code; Ctrl-C exits with 130.

    A Ctrl-C that ``main`` does not handle itself prints one line, no traceback.
    """
    # Ctrl-C raises KeyboardInterrupt even when a shell started the script with
    # SIGINT ignored (as non-interactive shells do with background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(None)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        code = EXIT_INTERRUPTED
    sys.exit(code)
