"""The model families genmedia serves: each name and the module that implements it.

Where this sits in a request's way: the catalog validator, the gateway and the family worker
look a family up here by the catalog's ``family`` value. Like vLLM's model registry, the list is
names and import paths: a family's module (``models/<family>.py``, which exports ``SPEC``, see
``family.py``) is imported the first time its spec is read. Family modules import torch and
diffusers only inside their worker-side hooks, so reading a spec stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

from genmedia.models.family import FamilySpec

# Family name -> module exporting its SPEC. A new family is one module and one line here.
FAMILY_MODULES: dict[str, str] = {
    "sd15": "genmedia.models.sd15",
    "sdxl": "genmedia.models.sdxl",
    "flux": "genmedia.models.flux",
    "wan": "genmedia.models.wan",
    "stable-audio": "genmedia.models.stable_audio",
}


class _Families(Mapping[str, FamilySpec]):
    """Family name -> spec; a family's module is imported when its spec is first read."""

    def __getitem__(self, name: str) -> FamilySpec:
        if name not in FAMILY_MODULES:
            raise KeyError(name)
        spec: FamilySpec = importlib.import_module(FAMILY_MODULES[name]).SPEC
        return spec

    def __contains__(self, name: object) -> bool:
        return name in FAMILY_MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILY_MODULES)

    def __len__(self) -> int:
        return len(FAMILY_MODULES)


FAMILIES: Mapping[str, FamilySpec] = _Families()


def family_spec(name: str) -> FamilySpec:
    """The spec of a family, or a ValueError listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}"
        ) from None


def family_module(name: str) -> ModuleType:
    """The module of a family (its SPEC, tiny builder, loader and runner)."""
    family_spec(name)  # a ValueError naming the known families
    return importlib.import_module(FAMILY_MODULES[name])


def lora_families() -> tuple[str, ...]:
    """The families whose pipelines load LoRA adapters, in registry order."""
    return tuple(name for name, spec in FAMILIES.items() if spec.takes_lora)
