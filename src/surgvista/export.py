"""`python -m surgvista.export`: launches `surgvista.cli.export`."""

from surgvista.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
