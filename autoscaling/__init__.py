"""genmedia.autoscaling."""
