"""`python -m surgvista.stream`: launches `surgvista.cli.stream`."""

from surgvista.cli.stream import main

if __name__ == "__main__":
    raise SystemExit(main())
