"""LightningModules and the training objective."""
