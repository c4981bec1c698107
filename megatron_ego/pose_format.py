"""The pose tensor every module shares: per pose and joint, x, y, z (metres, egocentric camera
frame) and a visibility channel (the data stores 0 or 1; an invisible joint's x, y, z are 0)."""

VISIBLE = 0.5
"""A joint is visible where its visibility channel exceeds this."""
