"""surgvista: SurgVISTA surgical video foundation models on Hydra + PyTorch Lightning."""

__version__ = "0.1.0"
