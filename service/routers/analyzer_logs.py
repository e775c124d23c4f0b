"""analyzer-logs: the analyze-mode (paper trading) twins of the order logs, same routes."""

from __future__ import annotations

from service.models.logs import AnalyzerLog
from service.routers.api_log_routes import api_log_router

router = api_log_router(AnalyzerLog, prefix="/analyzer-logs", writer=lambda w: w.analyzer_logs)
