"""Evaluation outputs: prediction files, figures, reconstruction panels, scoring of prediction files,
the leaderboard."""
