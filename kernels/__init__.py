"""genmedia.kernels."""
