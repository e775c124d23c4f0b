"""order-logs: the API call logs of live orders."""

from __future__ import annotations

from service.models.logs import OrderLog
from service.routers.api_log_routes import api_log_router

router = api_log_router(OrderLog, prefix="/order-logs", writer=lambda w: w.order_logs)
