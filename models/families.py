"""Registry of model families (sd15, sdxl, flux) and their pipeline-adapter modules.

Where this sits in a request's way: the family worker looks up its family here once at
replica start, then uses the module's ``load_pipeline`` / ``call_kwargs`` / ``SCHEDULERS`` for
every batch it runs. ``weights.resolve_source`` uses it to build ``tiny://<family>`` checkpoints.
Modules are imported lazily, so importing this registry does not import torch/diffusers.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILY_MODULES: dict[str, str] = {
    "sd15": "genmedia.models.sd15",
    "sdxl": "genmedia.models.sdxl",
    "flux": "genmedia.models.flux",
}


def known_families() -> list[str]:
    return sorted(FAMILY_MODULES)


def family_module(name: str) -> ModuleType:
    """Import and return the adapter module of family ``name``.

    Raises ValueError (listing the known families) for an unknown name.
    """
    try:
        module_name = FAMILY_MODULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model family {name!r}; known families: {', '.join(known_families())}"
        ) from None
    return importlib.import_module(module_name)
