"""Checks the config schemas (catalog, tenants, kernels) share: every field is described."""

from __future__ import annotations

import typing

from pydantic import BaseModel


def all_models(model: type[BaseModel], seen: set | None = None) -> set[type[BaseModel]]:
    """The model and every pydantic model reachable through its fields' annotations."""
    seen = set() if seen is None else seen
    if model in seen:
        return seen
    seen.add(model)
    for f in model.model_fields.values():
        for t in typing.get_args(f.annotation) or (f.annotation,):
            for inner in typing.get_args(t) or (t,):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    all_models(inner, seen)
    return seen


def undescribed_fields(model: type[BaseModel]) -> list[str]:
    """'Model.field' for every field without a description, in the whole schema."""
    return [
        f"{m.__name__}.{name}"
        for m in all_models(model)
        for name, f in m.model_fields.items()
        if not f.description
    ]
