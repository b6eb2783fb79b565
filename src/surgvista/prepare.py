"""`python -m surgvista.prepare`: launches `surgvista.cli.prepare`."""

from surgvista.cli.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
