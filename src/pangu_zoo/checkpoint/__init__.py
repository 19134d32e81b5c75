"""Checkpoint files: reading and writing weights, the pretrained-directory layout, foreign layouts."""
