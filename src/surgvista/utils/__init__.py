"""Helpers for the Hydra entry points and logging."""
