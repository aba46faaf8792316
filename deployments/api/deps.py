"""What every router takes from a request before its own work: the service, the caller's tenant
(from the bearer key), the base URL answers link to, and the queue API's headers.

Between the error handlers and a route: ``Caller`` runs the key check of ``tenants/`` (401);
the routes then call the ``GatewayService`` of this gateway replica (``app.state.service``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from genmedia.deployments.intake.service import GatewayService
from genmedia.deployments.tenants.schema import Tenant

# Declares the scheme in the OpenAPI document (the "Authorize" button of /docs); the key
# itself is checked by the service's Authenticator, which reads the raw header.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key of the caller's tenant, sent as "
    "`Authorization: Bearer gm_<id>_<secret>`.",
)


# Dependencies are ``async def``: FastAPI runs a plain ``def`` one on its thread pool, one
# thread hop per dependency per request, which on a busy gateway costs more than the work.


async def get_service(request: Request) -> GatewayService:
    return request.app.state.service


async def get_caller(
    request: Request,
    response: Response,
    service: Annotated[GatewayService, Depends(get_service)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Tenant:
    """The tenant of the bearer key (401 without a valid one), its call charged to the
    tenant's rate limit on this replica (429 over it; ``intake/guard.py``)."""
    tenant = service.auth.authenticate(request.headers.get("authorization"))
    headers = service.guard.charge(tenant, request.method)
    request.state.ratelimit_headers = headers  # an error answer carries them too (errors.py)
    response.headers.update(headers)
    return tenant


async def get_base_url(request: Request) -> str:
    """The URL the caller reached the gateway at; status and output URLs start with it."""
    return str(request.base_url)


Service = Annotated[GatewayService, Depends(get_service)]
Caller = Annotated[Tenant, Depends(get_caller)]
BaseUrl = Annotated[str, Depends(get_base_url)]
Deadline = Annotated[
    str | None,
    Header(
        alias="X-Deadline-Seconds",
        description="Seconds from now by which the job must start; refused (429) when it "
        "cannot, EXPIRED when it passes in the queue.",
    ),
]
IdemKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A retried submit with the same key returns the same job.",
    ),
]
Prefer = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description="'wait=N' (seconds, at most 60): hold the answer until the job ends or N "
        "seconds pass. Submit: the finished job's result (200) or the usual 202 body; sync "
        "route: the result, or 202 with the job's status instead of a 504.",
    ),
]
