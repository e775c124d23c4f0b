"""Typed async client of the AlgoWays Store API.

async with StoreClient("http://127.0.0.1:8000", token) as store:
    context = await store.orders_context(api_key, "RELIANCE", "NSE")
"""

from algoways_store_client import models
from algoways_store_client._operations import OPERATIONS, Operation
from algoways_store_client.client import RetryPolicy, StoreClient
from algoways_store_client.errors import (
    ApiKeyUnknown,
    BrokerTokenMissing,
    BrokerTokenRevoked,
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
    SymbolUnknown,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)

__all__ = [
    "OPERATIONS",
    "ApiKeyUnknown",
    "BrokerTokenMissing",
    "BrokerTokenRevoked",
    "Conflict",
    "Forbidden",
    "NotFound",
    "Operation",
    "RetryPolicy",
    "StoreClient",
    "StoreError",
    "SymbolUnknown",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "models",
]
