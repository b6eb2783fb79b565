"""`python -m surgvista.shards`: launches `surgvista.cli.shards`."""

from surgvista.cli.shards import main

if __name__ == "__main__":
    raise SystemExit(main())
