"""Routing to the active scheduler: a Serve request router for the scheduler deployment.

Between gateway and scheduler. With standby replicas (``server.scheduler.standby``) the
scheduler deployment has several replicas and only the one holding the job store's lease serves.
Each replica reports ``{"active": 1}`` or ``{"active": 0}`` as its routing stats (Serve's
controller pulls them every ``ROUTING_STATS_PERIOD_S`` and broadcasts changes to every handle),
and this router sends each call to a replica reporting active. While none does (a takeover in
progress, stats not yet pulled) every replica is a candidate: a standby that is about to take over
holds the call until it is active, one that is not answers ``SchedulerNotActive`` at once and the
gateway's client tries again (``serve/gateway.py``).
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

ROUTING_STATS_PERIOD_S = 1.0  # how often Serve asks each scheduler replica whether it is active
ROUTER_PATH = f"{__name__}:ActiveSchedulerRouter"


def active_first(replicas: list[RunningReplica]) -> list[list[RunningReplica]]:
    """Ranks for Serve: the replicas that report holding the lease, else all of them."""
    active = [r for r in replicas if r.routing_stats.get("active")]
    return [active] if active else [list(replicas)]


class ActiveSchedulerRouter(RequestRouter):
    """Every call to the replica that holds the lease (see the module docstring)."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        return active_first(candidate_replicas)
