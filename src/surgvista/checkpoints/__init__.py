"""Checkpoints: reading (finite-checked), key mapping to and from Hugging Face, position tables, backbone
loading, safe writing and export."""
