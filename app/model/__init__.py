"""Model description and files: hyperparameters, canonical weight names, checkpoint formats."""
