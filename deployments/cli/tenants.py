"""``genmedia tenants ...``: validate a tenants file, create tenants, add API keys; with
``--url``, add and revoke keys and change quotas on a running cluster (``api/admin.py``).

Where an operator gives someone access: a new key is printed once (stdout, alone on its line, so
scripts can capture it) and only its hash is written; the file is rewritten atomically and only
when the result validates. Comments in the YAML file are not kept when it is rewritten.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from genmedia.deployments.protocol import PRIORITY_CLASSES
from genmedia.deployments.tenants.keys import new_api_key
from genmedia.deployments.tenants.schema import (
    TenantsError,
    TenantsFile,
    parse_tenants,
    read_tenants_data,
)

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 200)
tenants_app = typer.Typer(
    no_args_is_help=True, help="Tenants files: validate them, create tenants, add API keys."
)

FileArg = Annotated[Path, typer.Argument(help="Tenants YAML file.")]
TenantArg = Annotated[str, typer.Argument(help="Tenant id.")]

_ONCE = (
    "[yellow]Save this key now:[/] it is stored only as a hash and cannot be shown again "
    "(add another key if it is lost)."
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _report(e: TenantsError, what: str) -> typer.Exit:
    for issue in e.issues:
        console.print(f"[red]✗[/] {issue}", highlight=False)
    return _fail(f"{len(e.issues)} problem(s) {what}")


def _load_raw(file: Path) -> tuple[str, dict[str, Any]]:
    """The raw data of a valid tenants file (edits start from it, not from defaults filled in)."""
    try:
        name, data = read_tenants_data(file)
        parse_tenants(data, name)
    except TenantsError as e:
        raise _report(e, "in the tenants file; fix them first") from None
    assert isinstance(data, dict)
    return name, data


def _check_and_write(file: Path, name: str, data: dict[str, Any]) -> TenantsFile:
    try:
        tenants = parse_tenants(data, name)
    except TenantsError as e:
        raise _report(e, "in the result; nothing written") from None
    try:
        _write_atomic(file, data)
    except OSError as e:
        raise _fail(f"cannot write {file}: {e.strerror or e}") from None
    return tenants


def _write_atomic(file: Path, data: dict[str, Any]) -> None:
    """Write YAML next to the target, fsync, then rename over it (keeps the file's mode; a new
    file is 0600 since it holds webhook secrets)."""
    target = file.resolve()
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _tenant_entries(data: dict[str, Any]) -> list[Any]:
    tenants = data.get("tenants")
    return tenants if isinstance(tenants, list) else []


UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="A running gateway (e.g. http://127.0.0.1:8000): change it there."),
]
AdminKeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="GENMEDIA_ADMIN_KEY", help="An API key of an admin tenant."),
]


def _call(method: str, url: str, key: str | None, path: str, body: dict[str, Any]) -> Any:
    """One admin call to a running gateway; its error (status, field, message) ends the command."""
    import httpx

    if not key:
        raise _fail("--key (or $GENMEDIA_ADMIN_KEY): an API key of an admin tenant is needed")
    try:
        r = httpx.request(
            method,
            url.rstrip("/") + path,
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30.0,
        )
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            fields = ", ".join(f["field"] for f in err.get("fields") or [])
            detail = f"{err['type']}: {err['message']}" + (f" (field {fields})" if fields else "")
        except (ValueError, KeyError, TypeError):
            detail = r.text[:300]
        raise _fail(f"{method} {path} answered {r.status_code}: {detail}", code=1)
    return r.json()


def _print_key(key: str) -> None:
    console.print(_ONCE)
    typer.echo(key)  # stdout holds the key and nothing else


# -- commands ----------------------------------------------------------------------------------
@tenants_app.command("validate")
def validate(file: FileArg) -> None:
    """Validate a tenants file; print every problem with file, tenant id and field."""
    try:
        name, data = read_tenants_data(file)
        tenants = parse_tenants(data, name)
    except TenantsError as e:
        raise _report(e, "in the tenants file") from None
    table = Table(
        "tenant",
        "weight",
        "classes (default first)",
        "models",
        "keys",
        "req/min",
        "concurrent",
        "queued",
        "webhooks",
        title=str(file),
    )
    for t in tenants.tenants:
        classes = [t.default_class] + [c for c in t.allowed_classes if c != t.default_class]
        table.add_row(
            t.id,
            f"{t.weight:g}",
            ", ".join(classes),
            ", ".join(t.allowed_models) if t.allowed_models is not None else "all",
            str(len(t.api_keys)),
            str(t.quotas.requests_per_minute),
            str(t.quotas.max_concurrent_jobs),
            str(t.quotas.max_queued_jobs),
            "signed" if t.webhook_secret else "unsigned",
        )
    out.print(table)
    out.print(f"[green]✓[/] {len(tenants.tenants)} tenant(s) valid")


@tenants_app.command("add-key")
def add_key(
    file_or_tenant: Annotated[
        str,
        typer.Argument(metavar="FILE", help="Tenants YAML file (with --url: the tenant id)."),
    ],
    tenant_arg: Annotated[
        str | None, typer.Argument(metavar="TENANT", help="Tenant id (not with --url).")
    ] = None,
    description: Annotated[
        str, typer.Option("--description", "-d", help="Who or what uses the key.")
    ] = "",
    url: UrlOpt = None,
    key: AdminKeyOpt = None,
) -> None:
    """Add a new API key to a tenant and print it once: in a tenants file (FILE TENANT), or on
    a running cluster (--url URL --key ADMIN_KEY TENANT; only the hash is stored there)."""
    if url is not None:
        if tenant_arg is not None:
            raise _fail("with --url give only the tenant id (the cluster's tenants file is used)")
        body = _call(
            "POST",
            url,
            key,
            f"/v1/admin/tenants/{file_or_tenant}/keys",
            {"description": description},
        )
        console.print(f"[green]✓[/] key {body['id']} added to tenant {body['tenant']!r} at {url}")
        _print_key(body["key"])
        return
    if tenant_arg is None:
        raise _fail("give the tenants file and the tenant id (or --url URL --key KEY TENANT)")
    file, tenant = Path(file_or_tenant), tenant_arg
    name, data = _load_raw(file)
    entry = next(
        (t for t in _tenant_entries(data) if isinstance(t, dict) and t.get("id") == tenant), None
    )
    if entry is None:
        known = ", ".join(str(t.get("id")) for t in _tenant_entries(data) if isinstance(t, dict))
        raise _fail(f"no tenant {tenant!r} in {file}; tenants: {known or 'none'}")
    key_id, new_key, record = new_api_key(description)
    keys = entry.get("api_keys")
    entry["api_keys"] = [*(keys if isinstance(keys, list) else []), record.model_dump(mode="json")]
    _check_and_write(file, name, data)
    console.print(f"[green]✓[/] key {key_id} added to tenant {tenant!r} in {file}", highlight=False)
    _print_key(new_key)


@tenants_app.command("create")
def create(
    file: FileArg,
    tenant: TenantArg,
    weight: Annotated[float, typer.Option(help="Fair-share weight (> 0).")] = 1.0,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--classes",
            help="Allowed priority class (repeatable or comma-separated; default: "
            f"{','.join(PRIORITY_CLASSES)}).",
        ),
    ] = None,
    default_class: Annotated[
        str | None, typer.Option(help="Class of requests naming none (default: interactive).")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Allowed model id (repeatable; default: every model)."),
    ] = None,
    max_concurrent_jobs: Annotated[int | None, typer.Option(help="Running jobs cap.")] = None,
    requests_per_minute: Annotated[int | None, typer.Option(help="Rate limit.")] = None,
    max_queued_jobs: Annotated[int | None, typer.Option(help="Queued jobs cap.")] = None,
    webhook_secret: Annotated[
        bool, typer.Option(help="Generate a webhook signing secret (stored in the file).")
    ] = True,
    description: Annotated[
        str, typer.Option("--description", "-d", help="Description of the first key.")
    ] = "",
) -> None:
    """Add a tenant with one API key (printed once); creates the file when missing."""
    if file.exists():
        name, data = _load_raw(file)
    else:
        name, data = str(file.resolve()), {"version": 1, "tenants": []}
    if any(isinstance(t, dict) and t.get("id") == tenant for t in _tenant_entries(data)):
        raise _fail(f"tenant {tenant!r} already exists in {file}; add a key with add-key")
    key_id, key, record = new_api_key(description)
    entry: dict[str, Any] = {"id": tenant, "weight": weight}
    if classes:
        entry["allowed_classes"] = [c.strip() for cs in classes for c in cs.split(",") if c.strip()]
    if default_class:
        entry["default_class"] = default_class
    if model:
        entry["allowed_models"] = list(model)
    quotas = {
        k: v
        for k, v in (
            ("max_concurrent_jobs", max_concurrent_jobs),
            ("requests_per_minute", requests_per_minute),
            ("max_queued_jobs", max_queued_jobs),
        )
        if v is not None
    }
    if quotas:
        entry["quotas"] = quotas
    if webhook_secret:
        # Standard Webhooks' form: whsec_ + base64 of 32 random bytes
        entry["webhook_secret"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    entry["api_keys"] = [record.model_dump(mode="json")]
    data["tenants"] = [*_tenant_entries(data), entry]
    _check_and_write(file, name, data)
    console.print(f"[green]✓[/] tenant {tenant!r} created in {file} with key {key_id}")
    if webhook_secret:
        console.print(
            f"webhook secret: in {file} (tenants → {tenant} → webhook_secret); the tenant needs "
            "it to verify webhook-signature (Standard Webhooks)",
            highlight=False,
        )
    _print_key(key)


@tenants_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's public id (8 hex, after 'gm_').")],
    url: UrlOpt = None,
    key: AdminKeyOpt = None,
) -> None:
    """Revoke an API key on a running cluster (of the tenants file or added at run time)."""
    if url is None:
        raise _fail("--url is needed (in a tenants file, delete the key's entry instead)")
    body = _call("DELETE", url, key, f"/v1/admin/keys/{key_id}", {})
    console.print(f"[green]✓[/] key {body['id']} of tenant {body['tenant']!r} revoked at {url}")


@tenants_app.command("set-quota")
def set_quota(
    tenant: TenantArg,
    changes: Annotated[
        list[str], typer.Argument(help="field=value, e.g. max_queued_jobs=100 (repeatable).")
    ],
    url: UrlOpt = None,
    key: AdminKeyOpt = None,
) -> None:
    """Change quota fields of a tenant on a running cluster; prints the quotas in force."""
    if url is None:
        raise _fail("--url is needed (in a tenants file, edit the tenant's quotas instead)")
    body: dict[str, Any] = {}
    for change in changes:
        field, sep, value = change.partition("=")
        if not sep or not value.strip().isdigit():
            raise _fail(f"{change!r}: expected field=value with a whole number")
        body[field.strip()] = int(value)
    out = _call("PATCH", url, key, f"/v1/admin/tenants/{tenant}/quotas", body)
    for name, value in out["quotas"].items():
        mark = " (set at run time)" if name in out["overrides"] else ""
        typer.echo(f"{name}={value}{mark}")
