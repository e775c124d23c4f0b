"""One order's round trips through the AlgoWays Store, with the Python client: context, then record.

Against `make run` (127.0.0.1:8000):

    pip install ./client
    ALGOWAYS_TOKEN=<the admin token from .env's SERVICE_TOKENS> python examples/order_flow.py

Environment: ALGOWAYS_URL (default http://127.0.0.1:8000), ALGOWAYS_TOKEN (a service token with
read+write, and secrets for the broker's token), ALGOWAYS_API_KEY (a platform user's API key;
without it a `demo-trader` user, key and broker token are set up), ALGOWAYS_SYMBOL and
ALGOWAYS_EXCHANGE (default RELIANCE on NSE; a one-row demo contract is loaded only when that
exchange holds no symbols at all).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from algoways_store_client import (
    ApiKeyUnknown,
    BrokerTokenMissing,
    BrokerTokenRevoked,
    Conflict,
    StoreClient,
    StoreError,
    SymbolUnknown,
)

DEMO_USER = "demo-trader"
HEADER = (
    "symbol,brsymbol,name,exchange,brexchange,token,expiry,strike,lotsize,instrumenttype,tick_size"
)


async def set_up_demo(store: StoreClient, symbol: str, exchange: str) -> str:
    """A demo user with an API key and a broker token, and the symbol if its exchange is empty."""
    try:
        await store.create_user(DEMO_USER, "demo-trader@example.com", f"demo-{uuid.uuid4()}")
        print(f"created user {DEMO_USER}")
    except Conflict:
        print(f"user {DEMO_USER} exists")
    key = await store.put_api_key(DEMO_USER)
    print(f"issued an API key for {DEMO_USER}")
    await store.put_broker_token(
        DEMO_USER, body={"auth_token": "demo-broker-auth", "broker": "zerodha"}
    )
    print("stored a demo broker token (zerodha)")
    if not (await store.search_symbols(exchange=exchange, limit=1))["items"]:
        row = f"{symbol},{symbol}-EQ,{symbol},{exchange},{exchange},2885,,,1,EQ,0.05"
        loaded = await store.load_symbols(
            content=f"{HEADER}\n{row}\n", content_type="text/csv", exchange=[exchange]
        )
        print(f"loaded a one-row demo contract on {exchange}: {loaded['rows']} row")
    return key.api_key


async def main() -> int:
    url = os.environ.get("ALGOWAYS_URL", "http://127.0.0.1:8000")
    token = os.environ.get("ALGOWAYS_TOKEN")
    if not token:
        print("set ALGOWAYS_TOKEN to a service token (see .env, SERVICE_TOKENS)", file=sys.stderr)
        return 2
    symbol = os.environ.get("ALGOWAYS_SYMBOL", "RELIANCE")
    exchange = os.environ.get("ALGOWAYS_EXCHANGE", "NSE")

    async with StoreClient(url, token, timeout=5.0) as store:
        api_key = os.environ.get("ALGOWAYS_API_KEY") or await set_up_demo(store, symbol, exchange)

        started = time.perf_counter()
        try:
            context = await store.orders_context(api_key, symbol, exchange, include_auth=True)
        except ApiKeyUnknown:
            print("the API key matches no user", file=sys.stderr)
            return 1
        except (BrokerTokenMissing, BrokerTokenRevoked) as error:
            print(f"the user must log in to the broker again: {error.detail}", file=sys.stderr)
            return 1
        except SymbolUnknown as error:
            print(error.detail, file=sys.stderr)
            return 1
        validated = time.perf_counter()
        instrument = context.instrument
        print(
            f"context: user {context.user_id}, broker {context.broker}, mode {context.order_mode}, "
            f"analyze {context.analyze_mode}; {instrument.symbol} on {instrument.exchange} is "
            f"{instrument.brsymbol} token {instrument.token}, lot {instrument.lotsize} "
            f"({(validated - started) * 1000:.1f} ms)"
        )

        # Here the platform would place the order with the broker, using context.auth_token.
        order = {"symbol": symbol, "exchange": exchange, "action": "BUY", "quantity": 1}
        answer = {"status": "success", "orderid": f"demo-{uuid.uuid4().hex[:12]}"}
        done = time.perf_counter()

        recorded = await store.orders_record(
            log={"api_type": "placeorder", "request_data": order, "response_data": answer},
            latency={
                "order_id": answer["orderid"],
                "user_id": context.user_id,
                "broker": context.broker,
                "symbol": symbol,
                "order_type": "PLACE",
                "validation_latency_ms": (validated - started) * 1000,
                "total_latency_ms": (done - started) * 1000,
                "status": "SUCCESS",
            },
        )
        print(
            f"recorded order {answer['orderid']}: {recorded.log_table} id {recorded.log_id}, "
            f"latency id {recorded.latency_id}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except StoreError as error:
        print(f"the store answered {error}", file=sys.stderr)
        sys.exit(1)
