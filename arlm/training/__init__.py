"""The trainer and its stages: every training command of arimg."""
