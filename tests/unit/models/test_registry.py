"""The family registry: one module per family exporting its spec, read without torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import typing

import pytest

from genmedia.models import catalog, media
from genmedia.models.params import Task
from genmedia.models.registry import (
    FAMILIES,
    FAMILY_MODULES,
    family_module,
    family_spec,
    lora_families,
)


def test_every_listed_module_exports_its_spec() -> None:
    assert list(FAMILIES) == list(FAMILY_MODULES)
    for name, path in FAMILY_MODULES.items():
        spec = FAMILIES[name]
        assert spec is importlib.import_module(path).SPEC is family_module(name).SPEC
        assert spec.name == name and spec.title
        assert spec.default_scheduler in spec.schedulers
        assert spec.size_multiple >= 1 and spec.tiny_version >= 1
        assert set(spec.tasks) <= set(typing.get_args(Task))
        assert spec.tasks[0] in media.FORMATS_BY_TASK  # a model's own task makes media
        assert (spec.lora_denoiser is None) == (not spec.takes_lora)
        assert spec.lora_denoiser is None or spec.lora_denoiser in spec.lora_components


def test_lora_families_come_from_the_specs() -> None:
    assert lora_families() == ("sd15", "sdxl", "flux")
    assert lora_families() == catalog.LORA_FAMILIES
    assert FAMILIES["wan"].num_frames_step == 4
    assert not FAMILIES["stable-audio"].takes_lora


def test_unknown_family() -> None:
    assert "kandinsky" not in FAMILIES
    assert FAMILIES.get("kandinsky") is None
    with pytest.raises(ValueError, match="known families: flux, sd15, sdxl, stable-audio, wan"):
        family_spec("kandinsky")
    with pytest.raises(ValueError, match="unknown model family 'kandinsky'"):
        family_module("kandinsky")


def test_specs_are_read_without_torch() -> None:
    """The gateway and the catalog validator read every spec; none of them loads torch."""
    code = (
        "import sys\n"
        "from genmedia.models import catalog, params\n"
        "from genmedia.models.registry import FAMILIES\n"
        "specs = [FAMILIES[name] for name in FAMILIES]\n"
        "catalog.load_catalog()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
