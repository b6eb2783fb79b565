"""`python -m surgvista.pretrain_probe`: launches `surgvista.evaluation.pretrain_probe`."""

from surgvista.evaluation.pretrain_probe import main

if __name__ == "__main__":
    raise SystemExit(main())
