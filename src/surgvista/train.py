"""`python -m surgvista.train`: launches `surgvista.cli.train`."""

from surgvista.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
