"""`python -m surgvista.score`: launches `surgvista.evaluation.scoring`."""

from surgvista.evaluation.scoring import main

if __name__ == "__main__":
    raise SystemExit(main())
