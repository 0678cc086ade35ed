"""A model assembled for generation: its weights in an engine, its tokenizer, its keyword spec."""
