"""HTTP layer of the gateway: FastAPI routers per resource over ``intake.GatewayService``.

``app`` builds the app (``build_api``); ``deps`` gives routes the service and the caller's tenant;
``models``, ``jobs``, ``files``, ``loras``, ``usage`` and ``health`` hold the routes; ``schemas``
the response bodies; ``errors`` the error shape, its handlers and the body-size limit.
"""
