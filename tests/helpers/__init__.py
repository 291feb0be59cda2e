"""Helpers shared by the test modules (import them as ``helpers.<module>``; pytest puts the
tests folder on ``sys.path``): :mod:`.numerics` (tolerances, error measures, seeds, backend
parameters), :mod:`.dispatch` (op-call counting, largest-tensor probes), :mod:`.models` (tiny
seeded models), :mod:`.train` (tiny supernets and synthetic data for training tests)."""
