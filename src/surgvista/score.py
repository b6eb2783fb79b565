"""`python -m surgvista.score`: launches `surgvista.cli.score`."""

from surgvista.cli.score import main

if __name__ == "__main__":
    raise SystemExit(main())
