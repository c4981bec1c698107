"""Losses: DINO (represent, predict), action (act), and their weighted total."""
