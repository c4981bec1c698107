"""Training: distributed set-up, schedules, EMA teacher, checkpoints, the trainer loop, metrics."""
