"""Leaves of the package: user errors, atomic I/O and hashing, host-sync counting, config checks, config
folders, seeding. Nothing here imports another part of surgvista."""
