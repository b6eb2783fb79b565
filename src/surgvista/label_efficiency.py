"""`python -m surgvista.label_efficiency`: launches `surgvista.cli.label_efficiency`."""

from surgvista.cli.label_efficiency import main

if __name__ == "__main__":
    raise SystemExit(main())
