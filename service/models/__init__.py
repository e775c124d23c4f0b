"""Every model module, imported so that Base.metadata (and Alembic autogenerate) sees them all."""

import importlib
import pkgutil

from service.models.base import Base

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Base"]
