"""gpt2-serve: self-hosted GPT-2 text generation on TensorFlow 2."""

__version__ = "0.1.0"
