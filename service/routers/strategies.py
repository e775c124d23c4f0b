"""strategies: webhook strategies (TradingView and the like) and their symbol mappings."""

from __future__ import annotations

from service.repositories.strategies import STRATEGIES
from service.routers.strategy_routes import make_router

router = make_router(STRATEGIES, lambda runtime: runtime.strategy_webhooks)
