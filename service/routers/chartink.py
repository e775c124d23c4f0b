"""chartink: ChartInk screener strategies and their symbol mappings (the `strategies` routes)."""

from service.repositories.strategies import CHARTINK
from service.routers.strategies import make_router

router = make_router(CHARTINK)
