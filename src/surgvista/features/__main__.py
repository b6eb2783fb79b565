"""`python -m surgvista.features extract ...`: launches `surgvista.cli.features`."""

from surgvista.cli.features import main

if __name__ == "__main__":
    raise SystemExit(main())
