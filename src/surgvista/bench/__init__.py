"""Benchmarks: ``python -m surgvista.bench pretrain --preset small --compare eager-fp16`` (see docs/performance.md)."""
