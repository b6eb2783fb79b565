"""`python -m surgvista.prepare`: launches `surgvista.data.prepare`."""

from surgvista.data.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
