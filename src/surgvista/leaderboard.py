"""`python -m surgvista.leaderboard`: launches `surgvista.cli.leaderboard`."""

from surgvista.cli.leaderboard import main

if __name__ == "__main__":
    raise SystemExit(main())
