"""`python -m surgvista.eval`: launches `surgvista.cli.eval`."""

from surgvista.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
