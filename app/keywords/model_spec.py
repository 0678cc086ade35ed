"""A model folder's ``keywords.json`` (next to ``hparams.json``): the model is keyword-conditioned,
and these are its delimiters. Written by ``export`` when the run's dataset was keyword-encoded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.keywords.format import Delimiters

FILENAME = "keywords.json"


@dataclass(frozen=True)
class KeywordSpec:
    delimiters: Delimiters
    max_keywords: int  # most keywords in one training document
    language: str

    def as_dict(self) -> dict:
        return {
            "delimiters": self.delimiters.as_dict(),
            "max_keywords": self.max_keywords,
            "language": self.language,
        }


def from_dict(data: dict) -> KeywordSpec:
    return KeywordSpec(
        Delimiters.from_dict(data.get("delimiters", {})),
        int(data.get("max_keywords", 3)),
        str(data.get("language", "en")),
    )


def write_model_spec(model_dir: Path, data: dict) -> Path:
    path = Path(model_dir) / FILENAME
    path.write_text(json.dumps(from_dict(data).as_dict(), indent=2) + "\n")
    return path


def read_model_spec(model_dir: Path | str) -> KeywordSpec | None:
    """The spec of the model in ``model_dir`` (None: not keyword-conditioned). The server reads it
    once, when it loads the model (``LoadedModel.keywords``)."""
    path = Path(model_dir) / FILENAME
    return from_dict(json.loads(path.read_text())) if path.is_file() else None
