"""Reading, loading, checking, writing and exporting checkpoints; import from the submodules."""
