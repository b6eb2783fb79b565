"""``surgvista-prepare`` / ``python -m surgvista.prepare``: raw dataset → manifests (see ``surgvista.data.prepare``)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from surgvista.data.prepare import main as prepare_main

    return prepare_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
