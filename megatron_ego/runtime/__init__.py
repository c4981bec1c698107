"""Run-time set-up shared by training, evaluation and inference: processes, devices, seeding."""
