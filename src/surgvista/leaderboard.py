"""`python -m surgvista.leaderboard`: launches `surgvista.evaluation.leaderboard`."""

from surgvista.evaluation.leaderboard import main

if __name__ == "__main__":
    raise SystemExit(main())
