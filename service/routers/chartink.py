"""chartink: ChartInk screener strategies and their symbol mappings (the `strategies` routes)."""

from __future__ import annotations

from service.repositories.strategies import CHARTINK
from service.routers.strategy_routes import make_router

router = make_router(CHARTINK, lambda runtime: runtime.chartink_webhooks)
