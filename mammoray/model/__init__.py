"""The network and everything that travels with it: the U-Net builder, losses, the metric sums
(NumPy and TensorFlow side by side), the row -> model-input conversion, the checkpoint format
and the TensorFlow runtime settings. Training, search, evaluation and inference all build on
this package; it imports none of them."""
