"""Transformer building blocks below every model: ViT blocks, masking, position tables, patchify."""
