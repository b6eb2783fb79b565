"""`python -m surgvista.ablation`: launches `surgvista.cli.ablation`."""

from surgvista.cli.ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
