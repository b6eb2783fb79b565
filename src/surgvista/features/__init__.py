"""Cached frozen-backbone features: per-frame (TeCNO) and per-clip (frozen probes) caches and their data modules."""
