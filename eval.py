"""Evaluate from a clone: ``python eval.py experiment=demo ckpt_path=...`` (the same as ``surgvista-eval ...``)."""

from surgvista.cli.eval import main

if __name__ == "__main__":
    main()
