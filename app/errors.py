"""The two errors bad input raises below the server, each saying what was wrong and where.

* :class:`ParamError`: a request's value (sampling, the generation spec, token ids). The server
  turns it into its validation error with ``param`` as given (each API family names the parameter
  in its own words from there), so no layer parses a name out of a message.
* :class:`ModelFileError`: a model folder's file (weights, hyperparameters, tokenizer files).
"""

from __future__ import annotations

from pathlib import Path


class ParamError(ValueError):
    """``param``'s value is not allowed; ``str(err)`` is ``"<param>: <detail>"``."""

    def __init__(self, param: str, detail: str):
        self.param = param
        self.detail = detail
        super().__init__(f"{param}: {detail}")


class ModelFileError(Exception):
    """A model folder that cannot be loaded: missing, truncated or inconsistent files.

    ``str(err)`` is meant for users: ``"<file>: <problem>"``, never a traceback.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
