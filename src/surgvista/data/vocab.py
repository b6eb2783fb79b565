"""Label-name vocabularies shared by the dataset adapters and the metrics (plain constants, no imports).

CholecT50: 6 instruments, 10 verbs, 15 targets and the 100 official triplets, each an ``(instrument, verb,
target)`` id triple; ``CHOLECT50_TRIPLETS`` names them ``"instrument,verb,target"`` (the dataset's label names).
"""

from __future__ import annotations

CHOLECT50_INSTRUMENTS = ("grasper", "bipolar", "hook", "scissors", "clipper", "irrigator")
CHOLECT50_VERBS = (
    "grasp",
    "retract",
    "dissect",
    "coagulate",
    "clip",
    "cut",
    "aspirate",
    "irrigate",
    "pack",
    "null_verb",
)
CHOLECT50_TARGETS = (
    "gallbladder",
    "cystic_plate",
    "cystic_duct",
    "cystic_artery",
    "cystic_pedicle",
    "blood_vessel",
    "fluid",
    "abdominal_wall_cavity",
    "liver",
    "adhesion",
    "omentum",
    "peritoneum",
    "gut",
    "specimen_bag",
    "null_target",
)

# (instrument, verb, target) of CholecT50 triplet ids 0..99, the dataset's label definition (the order of the
# CholecT50 triplet list and of the ivtmetrics component map).
# fmt: off
CHOLECT50_IVT = (
    (0, 2, 1), (0, 2, 0), (0, 2, 10), (0, 0, 3), (0, 0, 2), (0, 0, 4), (0, 0, 1), (0, 0, 0), (0, 0, 12), (0, 0, 8),
    (0, 0, 10), (0, 0, 11), (0, 0, 13), (0, 8, 0), (0, 1, 2), (0, 1, 4), (0, 1, 1), (0, 1, 0), (0, 1, 12), (0, 1, 8),
    (0, 1, 10), (0, 1, 11), (1, 3, 7), (1, 3, 5), (1, 3, 3), (1, 3, 2), (1, 3, 4), (1, 3, 1), (1, 3, 0), (1, 3, 8),
    (1, 3, 10), (1, 3, 11), (1, 2, 9), (1, 2, 3), (1, 2, 2), (1, 2, 1), (1, 2, 0), (1, 2, 10), (1, 0, 1), (1, 0, 8),
    (1, 0, 13), (1, 1, 2), (1, 1, 4), (1, 1, 0), (1, 1, 8), (1, 1, 10), (2, 3, 5), (2, 3, 3), (2, 3, 2), (2, 3, 4),
    (2, 3, 1), (2, 3, 0), (2, 3, 8), (2, 3, 10), (2, 5, 5), (2, 5, 11), (2, 2, 5), (2, 2, 3), (2, 2, 2), (2, 2, 1),
    (2, 2, 0), (2, 2, 10), (2, 2, 11), (2, 1, 0), (2, 1, 8), (3, 3, 10), (3, 5, 9), (3, 5, 5), (3, 5, 3), (3, 5, 2),
    (3, 5, 1), (3, 5, 8), (3, 5, 10), (3, 5, 11), (3, 2, 1), (3, 2, 0), (3, 2, 10), (4, 4, 5), (4, 4, 3), (4, 4, 2),
    (4, 4, 4), (4, 4, 1), (5, 6, 6), (5, 2, 2), (5, 2, 4), (5, 2, 1), (5, 2, 0), (5, 2, 10), (5, 7, 7), (5, 7, 4),
    (5, 7, 8), (5, 1, 0), (5, 1, 8), (5, 1, 10), (0, 9, 14), (1, 9, 14), (2, 9, 14), (3, 9, 14), (4, 9, 14),
    (5, 9, 14),
)
# fmt: on

# The fixed official vocabulary: triplet id -> "instrument,verb,target" (ids 0-99).
CHOLECT50_TRIPLETS = tuple(
    f"{CHOLECT50_INSTRUMENTS[i]},{CHOLECT50_VERBS[v]},{CHOLECT50_TARGETS[t]}" for i, v, t in CHOLECT50_IVT
)
