"""genmedia.deployments."""
