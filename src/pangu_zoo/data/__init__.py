"""Training data: corpus reading, preprocessing to MindRecord / Megatron files, and the training dataset."""
