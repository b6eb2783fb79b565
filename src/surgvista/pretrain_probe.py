"""`python -m surgvista.pretrain_probe`: launches `surgvista.cli.pretrain_probe`."""

from surgvista.cli.pretrain_probe import main

if __name__ == "__main__":
    raise SystemExit(main())
