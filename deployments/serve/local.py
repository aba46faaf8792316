"""Ray and Serve calls made from outside the cluster: start a local Ray (logical GPUs where there
are none), put Serve's HTTP proxy on a port, run or remove the genmedia app, read its status.

Before any request: ``genmedia serve``, ``deploy`` and ``status`` (``deployments/cli/main.py``),
the integration tests' session cluster and the benchmarks call these, so that the rest of the
product never imports Ray.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from genmedia.deployments.serve.app import APP_NAME, build_app
from genmedia.deployments.tenants.schema import TenantsFile
from genmedia.models.catalog import Catalog


@dataclass(frozen=True)
class DeploymentState:
    """One deployment of a running app, as ``serve.status()`` reports it."""

    name: str
    status: str  # HEALTHY, UPDATING, UNHEALTHY, ...
    replicas: dict[str, int]  # replica state (RUNNING, STARTING, STOPPING, ...) -> count


@dataclass(frozen=True)
class AppState:
    """A running app: its own status and its deployments by name."""

    status: str  # RUNNING, DEPLOYING, DEPLOY_FAILED, ...
    deployments: dict[str, DeploymentState]


def _state_name(value: object) -> str:
    """``DeploymentStatus.HEALTHY`` (an enum or its text) -> ``HEALTHY``."""
    return str(value).split(".")[-1]


def start_ray(
    *,
    num_cpus: int,
    num_gpus: float,
    logging_level: int = logging.WARNING,
    env_vars: dict[str, str] | None = None,
) -> None:
    """A local Ray with ``num_gpus`` GPUs (logical ones where no CUDA device exists)."""
    # Ray starts workers at nice 15; on a CPU-only box that lets any busy process slow the
    # pipeline. Replicas here are the work, so they run at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,  # type: ignore[arg-type]  # Ray takes fractional counts too
        include_dashboard=False,
        logging_level=logging_level,
        log_to_driver=False,
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )


def reachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why a Ray cluster address does not answer a TCP connect within ``timeout_s`` (None: it
    does, or it is ``auto`` / ``local``). Checked before ``connect``, which retries for minutes
    against an address that never answers."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local", ""):
        return None
    hostport = urlsplit(address).netloc if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return f"not a host:port address: {address!r}"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as e:
        return f"{host}:{port} did not answer within {timeout_s:g} s ({e.strerror or e})"


def connect(address: str, logging_level: int = logging.WARNING) -> None:
    """Attach to a running Ray cluster (``ray://head:10001``, ``auto``); raises if there is none."""
    ray.init(address=address, logging_level=logging_level, log_to_driver=False)


def node_env(name: str) -> str | None:
    """An environment variable as a process Ray starts on the connected cluster sees it (one
    task; its node's environment): how ``deploy`` checks what Serve will read at import."""

    @ray.remote(num_cpus=0)
    def read() -> str | None:
        return os.environ.get(name)

    value: str | None = ray.get(read.remote(), timeout=60)
    return value


def cluster_gpus() -> float:
    """GPUs of the connected cluster."""
    return float(ray.cluster_resources().get("GPU", 0))


def start_http(host: str, port: int) -> None:
    """Serve's HTTP proxy on ``host:port``."""
    serve.start(http_options={"host": host, "port": port})


def stop() -> None:
    """Shut down Serve, then the Ray this process started or connected to."""
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


@contextmanager
def local_cluster(
    *,
    num_cpus: int,
    num_gpus: float,
    port: int,
    host: str = "127.0.0.1",
    logging_level: int = logging.WARNING,
    env_vars: dict[str, str] | None = None,
) -> Iterator[str]:
    """A local Ray and Serve's HTTP proxy until the block ends; yields the base URL. Apps are
    run in it with ``run_app``."""
    start_ray(num_cpus=num_cpus, num_gpus=num_gpus, logging_level=logging_level, env_vars=env_vars)
    try:
        start_http(host, port)
        yield f"http://{host}:{port}"
    finally:
        stop()


def run_app(catalog: Catalog, tenants: TenantsFile, *, gpus_available: bool = True) -> None:
    """Deploy (or redeploy) the genmedia app for ``catalog``; returns once it runs."""
    serve.run(
        build_app(catalog, tenants, gpus_available=gpus_available),
        name=APP_NAME,
        route_prefix="/",
    )


def deploy_watched(
    catalog: Catalog,
    tenants: TenantsFile,
    *,
    host: str,
    port: int,
    gpus_available: bool,
    on_state: Callable[[AppState | None], None],
    poll_s: float = 0.5,
) -> None:
    """Start the HTTP proxy and deploy the app in a thread, calling ``on_state`` every
    ``poll_s`` until the deploy call returns; re-raises what the deploy raised."""
    errors: list[Exception] = []

    def deploy() -> None:
        try:
            start_http(host, port)
            serve.run(
                build_app(catalog, tenants, gpus_available=gpus_available),
                name=APP_NAME,
                route_prefix="/",
                blocking=False,
            )
        except Exception as e:
            errors.append(e)

    runner = threading.Thread(target=deploy, daemon=True)
    runner.start()
    while runner.is_alive():
        try:
            state = app_state()
        except Exception:  # the controller is still starting
            state = None
        on_state(state)
        time.sleep(poll_s)
    if errors:
        raise errors[0]


def app_state(app: str = APP_NAME) -> AppState | None:
    """The app's status and its deployments' (None when no such app runs)."""
    status = serve.status().applications.get(app)
    if status is None:
        return None
    deployments = {
        name: DeploymentState(
            name=name,
            status=_state_name(d.status),
            replicas={_state_name(k): v for k, v in d.replica_states.items()},
        )
        for name, d in status.deployments.items()
    }
    return AppState(status=_state_name(status.status), deployments=deployments)


def deployment_info(name: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """What a deployment's ``info()`` answers (resources, GPU ids, loaded models, busy time)."""
    handle = serve.get_deployment_handle(name, APP_NAME)
    info: dict[str, Any] = handle.info.remote().result(timeout_s=timeout_s)
    return info


def info_reader(name: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An async reader of a deployment's ``info()`` over one handle (for event-loop callers)."""
    handle = serve.get_deployment_handle(name, app_name=APP_NAME)

    async def read() -> dict[str, Any]:
        info: dict[str, Any] = await handle.info.remote()
        return info

    return read


def delete_app(app: str = APP_NAME) -> None:
    """Remove the app (its replicas stop); the cluster and the HTTP proxy stay."""
    serve.delete(app)


def _deploy_apps(applications: list[dict[str, Any]]) -> None:
    """Apply a Serve config (its ``applications``) through the running controller."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    if client is None:  # not reached: the call raises when no controller runs
        raise RuntimeError("Serve is not running")
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))


def deploy_config(application: dict[str, Any]) -> None:
    """Deploy one application from Serve config data (``infra/serve_config.py``'s
    ``application_config``), as KubeRay's ``serveConfigV2`` would."""
    _deploy_apps([application])


def remove_config_apps(app: str = APP_NAME, timeout_s: float = 120.0) -> None:
    """Deploy an empty Serve config (every config-deployed app goes) and wait until ``app``
    is gone or ``timeout_s`` passed."""
    _deploy_apps([])
    end = time.monotonic() + timeout_s
    while app in serve.status().applications and time.monotonic() < end:
        time.sleep(0.5)
