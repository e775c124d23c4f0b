"""analyzer-logs: the analyze-mode (paper trading) twins of the order logs, same routes."""

from __future__ import annotations

from service.models.logs import AnalyzerLog
from service.routers.order_logs import api_log_router

router, lifespan = api_log_router(AnalyzerLog, prefix="/analyzer-logs")
