"""The one error a bad model folder raises: it names the file and says what is wrong."""

from __future__ import annotations

from pathlib import Path


class ModelFileError(Exception):
    """A model folder that cannot be loaded: missing, truncated or inconsistent files.

    ``str(err)`` is meant for users: ``"<file>: <problem>"``, never a traceback.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
