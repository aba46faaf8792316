"""Import path for config-driven deploys: ``genmedia.deployments.serve.entrypoint:build``.

A Serve config (``genmedia render serve-config``, KubeRay's ``serveConfigV2``) names this
builder; Serve calls it on the cluster with the config's ``args`` and runs the app it returns,
under the application-level autoscaling policy the same config names. ``args``:

- ``catalog``: the catalog as data (rendered in), or absent for the embedded default;
- ``tenants_file``: a tenants YAML on the cluster (e.g. a mounted Secret), or ``tenants`` as
  data; neither: the development tenant with key ``$GENMEDIA_DEV_API_KEY``;
- ``gpus_available``: false drops GPU asks (CPU-only clusters, tests).
"""

from __future__ import annotations

from ray.serve import Application

from genmedia.deployments.serve.app import build_app
from genmedia.deployments.tenants.schema import development_tenants, load_tenants, parse_tenants
from genmedia.models.catalog import load_catalog, parse_catalog


def build(args: dict) -> Application:
    data = args.get("catalog")
    catalog = (
        load_catalog()
        if data is None
        else parse_catalog(data, args.get("catalog_source", "<serve config args>"))
    )
    if args.get("tenants_file"):
        tenants = load_tenants(args["tenants_file"])
    elif args.get("tenants") is not None:
        tenants = parse_tenants(args["tenants"], "<serve config args>")
    else:
        tenants, _ = development_tenants()
    return build_app(catalog, tenants, gpus_available=bool(args.get("gpus_available", True)))
