"""Errors of the training engine."""


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, incompatible resume, ...); the message says why."""
