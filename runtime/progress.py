"""A progress bar with rate and ETA on a terminal (rich), and nothing at all when stderr is not
one (a pipe, a log file, a test) or the log is set to errors only (-q): folder inference,
training epochs, data checks, evaluation."""

from __future__ import annotations

import atexit
import sys


def wanted(enabled: bool = True) -> bool:
    """Whether to draw: asked for, stderr a terminal, and the log not set to errors only (-q)."""
    import logging

    quiet = logging.getLogger("busi").getEffectiveLevel() > logging.WARNING
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(enabled and not quiet and isatty is not None and isatty())


class Bar:
    """`advance(n=1)` as work is done, `close()` at the end (also a context manager); does
    nothing where `wanted` says no. Log lines printed meanwhile go above the bar (rich
    redirects stderr while it draws); results on the same terminal too, piped ones stay on
    stdout."""

    def __init__(self, total: int | None, what: str, unit: str = "images", enabled: bool = True):
        self._bar = None
        if not wanted(enabled):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        class Rate(TaskProgressColumn):
            def render(self, task):
                # rich's speed needs two updates within 30 s; slow steps (evaluation) get the mean rate
                speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.elapsed else None)
                from rich.text import Text

                return Text(f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=Console(stderr=True), redirect_stderr=True,
                             redirect_stdout=bool(getattr(sys.stdout, "isatty", lambda: False)()))
        self._task = self._bar.add_task(what, total=total)
        self._bar.start()
        atexit.register(self.close)  # an error that ends the run leaves no hidden cursor behind

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def set(self, completed: int) -> None:
        """Jump to `completed` (a resumed training run starts at its saved epoch)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tracked(items, total: int | None, what: str, unit: str = "images"):
    """Iterate `items` with a Bar (nothing drawn off a terminal)."""
    with Bar(total, what, unit) as bar:
        for x in items:
            yield x
            bar.advance()
