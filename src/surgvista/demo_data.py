"""`python -m surgvista.demo_data`: launches `surgvista.cli.demo_data`."""

from surgvista.cli.demo_data import main

if __name__ == "__main__":
    raise SystemExit(main())
