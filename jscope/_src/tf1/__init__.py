"""TF1 checkpoints without TensorFlow: the tensor bundle format, read and written."""
