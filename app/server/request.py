"""The one request every route family builds: :class:`TextRequest`, before validation.

Plain data (no TensorFlow, no app state), so the wire schemas that build it import it cheaply;
:func:`app.server.generation.submit` validates it against the model and the server's limits
(:mod:`app.server.validation`) into the spec every later layer carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TextRequest:
    """One generation as any family asks for it, before validation.

    Sampling happens when ``do_sample`` is set or any sampling knob is given (TGI's rule);
    otherwise decoding is greedy; ``temperature == 0`` is greedy whatever else is set."""

    prompt: str | Sequence[int]  # text, or token ids (an OpenAI token-id prompt)
    model: str | None = None
    max_new_tokens: int | None = None  # None: the server's default
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    do_sample: bool = False
    repetition_penalty: float | None = None
    truncate: int | None = None  # keep the prompt's last tokens
    speculative: bool = True
    top_n_tokens: int = 0  # alternatives reported with each token
    raw_alternatives: bool = False  # the alternatives under the model itself (OpenAI's top_logprobs)
    special_text: bool = False  # "<|endoftext|>" in the text is the end-of-text token (OpenAI's reading)
    return_full_text: bool = False  # the result's text starts with the prompt (TGI's flag, OpenAI's echo)
    # Keyword-conditioned models (README "Keywords"): the prompt is the document prefix, then `prompt`.
    keywords: Sequence[str] | None = None
    category: str | None = None
    title: str | None = None

    @property
    def keyword_request(self) -> bool:
        return self.keywords is not None or self.category is not None or self.title is not None

    @property
    def prompt_text(self) -> str | None:
        return self.prompt if isinstance(self.prompt, str) else None
