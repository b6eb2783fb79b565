"""Checkpoints: ``read`` (the safe, finite-checked reader), ``keys`` (key styles and the one Hugging Face ⇄ ours
table), ``grids`` (position-table kinds and resampling), ``load`` (``load_backbone`` and its report),
``run_folder`` (a run's ``config.yaml``; checks before resuming), ``io`` (safe checkpoint writing), ``export`` and
``hf`` (export to the original layout, safetensors or a Hugging Face folder). Import from the submodules."""
