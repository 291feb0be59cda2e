"""The quickstart's fixed settings: the model, the splits, the goal, the full and fast runs."""

from __future__ import annotations

IMG, PATCH, EMBED, DEPTH, HEADS, MLP_RATIO, CLASSES = 16, 4, 64, 4, 4, 2.0, 10
N_TEST, N_VAL = 360, 360
BUDGET = "bitops <= 0.5 * dense"
GOAL_RATIO, GOAL_POINTS = 0.5, 2.0

FULL = {
    "epochs": 50,
    "steps": 500,
    "population": 16,
    "generations": 10,
    "reps_b1": 50,
    "reps_b64": 20,
}
FAST = {
    "epochs": 10,
    "steps": 20,
    "population": 8,
    "generations": 2,
    "reps_b1": 5,
    "reps_b64": 3,
}
