"""Training and evaluation: metrics, losses, schedules, checkpoints, loops."""
