"""python -m service [serve | migrate | rotate-keys | init-env]"""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.config import ConfigError, DatabaseSettings, get_settings, load_settings


def _serve() -> None:
    import uvicorn

    from service.server import LimitedHttpToolsProtocol

    settings = get_settings()
    uvicorn.run(
        "service.main:app_from_env",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        http=LimitedHttpToolsProtocol,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )


async def _migrate() -> None:
    from service import migrate
    from service.db import make_engine

    engine = make_engine(load_settings(DatabaseSettings), null_pool=True)
    try:
        await migrate.upgrade(engine)
        print(f"database at {await migrate.current_revision(engine)}")
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the API with uvicorn on HOST:PORT (the default)")
    sub.add_parser("migrate", help="bring the database to the newest schema")
    sub.add_parser("rotate-keys", help="re-encrypt every stored secret under the newest key")
    init = sub.add_parser("init-env", help="write a .env with fresh secrets if none exists")
    init.add_argument("--path", default=".env")
    args = parser.parse_args(argv)
    try:
        if args.command in (None, "serve"):
            _serve()
        elif args.command == "migrate":
            asyncio.run(_migrate())
        elif args.command == "rotate-keys":
            from service.rotate import rotate_keys

            asyncio.run(rotate_keys(get_settings()))
        elif args.command == "init-env":
            from service.envfile import init_env

            print(init_env(args.path))
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
