"""``losses.csv``: one row per training step, appended by the trainer and read back by export."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FIELDS = ("step", "loss", "val_loss", "tokens_per_sec", "time")


@contextmanager
def loss_log(path: Path) -> Iterator[Callable[[dict], None]]:
    """A function appending one row to ``path`` (the header first when the file is new).

    Every row is flushed, so the log can be watched, and survives a kill, while training runs.
    """
    new_log = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_log:
            writer.writeheader()

        def write(row: dict) -> None:
            writer.writerow(row)
            fh.flush()

        yield write


def last_losses(run_dir: Path) -> tuple[int, float | None, float | None]:
    """(steps, last training loss, last validation loss) from the run's ``losses.csv``."""
    steps, loss, val = 0, None, None
    path = run_dir / "losses.csv"
    if path.is_file():
        with path.open() as fh:
            for row in csv.DictReader(fh):
                steps, loss = int(row["step"]), float(row["loss"])
                if row["val_loss"]:
                    val = float(row["val_loss"])
    return steps, loss, val
