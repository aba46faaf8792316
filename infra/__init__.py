"""genmedia.infra."""
