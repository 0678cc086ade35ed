"""Keyword-conditioned generation (minimaxir/gpt-2-keyword-generation's format): documents written
as ``<|startoftext|>~`category~^keywords~@title~}body<|endoftext|>`` so a model trained on them
writes a title and a body for given keywords."""
