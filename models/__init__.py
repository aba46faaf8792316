"""genmedia.models."""
