"""Training: optimizer groups, learning-rate schedule, the train step (loss scale, clipping), the loop."""
