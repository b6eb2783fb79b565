"""Train from a clone: ``python train.py experiment=demo`` (the same as ``surgvista-train experiment=demo``)."""

from surgvista.cli.train import main

if __name__ == "__main__":
    main()
