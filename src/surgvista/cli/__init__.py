"""Entry points: command-line parsing and exit codes only
(one `error: ...` line, exit 1 for a bad input, 2 for bad usage)."""
