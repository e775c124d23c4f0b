"""Every domain router, mounted under /api/v1.

A domain module exposes `router`; what lives longer than a request is in service/runtime/.
"""

from __future__ import annotations

from service.routers import (
    analyzer_logs,
    audit,
    auth,
    chartink,
    latency,
    order_logs,
    orders,
    settings,
    strategies,
    symbols,
    tokens,
    traffic,
    users,
)

DOMAINS = (
    settings,
    users,
    auth,
    symbols,
    tokens,
    strategies,
    chartink,
    order_logs,
    analyzer_logs,
    traffic,
    latency,
    orders,
    audit,
)

# Every /api/v1 route, to be mounted flat on the app (see service/routers/base.py).
API_ROUTES = [route for domain in DOMAINS for route in domain.router.routes]
