"""`python -m surgvista.export`: launches `surgvista.checkpoints.export`."""

from surgvista.checkpoints.export import main

if __name__ == "__main__":
    raise SystemExit(main())
