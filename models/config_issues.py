"""How configuration files (catalog, tenants) report what is wrong: every problem at once,
each located by file, item and field, in words a person reads (no pydantic jargon).

Used at deploy time by ``models/catalog.py`` and ``deployments/tenants/config.py``; no Ray, no
torch.
"""

from __future__ import annotations

from pydantic import ValidationError


def loc(parts: tuple) -> str:
    """A pydantic location as a dotted field name."""
    return ".".join(str(p) for p in parts) or "(root)"


def field_errors(error: ValidationError) -> list[tuple[str, str]]:
    """(field, message) for every error of a validation, messages cleaned up."""
    out = []
    for err in error.errors():
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        out.append((loc(err["loc"]), message))
    return out
