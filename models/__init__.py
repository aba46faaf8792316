"""genmedia.models: the catalog and its schema, one module per model family (its spec, request
rules, tiny checkpoint and runner, listed in ``registry.py``), weights, LoRA adapters and the
output encoders. Imports nothing from ``genmedia.deployments``."""
