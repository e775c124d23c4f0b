"""python -m service [serve | migrate | rotate-keys | init-env | import-legacy]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from service.config import ConfigError, DatabaseSettings, Settings, get_settings, load_settings

# prometheus-client's switch to multiprocess mode (read when a worker imports it).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

logger = logging.getLogger("service")


def _ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """Stand-in SIGTERM handler: uvicorn installs its own while it serves and, once it has shut
    down gracefully, restores this one and re-raises the signal it stopped on; with the default
    handler in place that would kill a cleanly drained process with -15 instead of exit 0."""


def _workers(settings: Settings) -> int:
    if settings.WORKERS > 1 and settings.backend == "sqlite":
        logger.warning(
            "WORKERS=%d asked for, serving with 1: on SQLite the writers of several processes "
            "would only queue on one file lock, and the caches of one process would not see the "
            "writes of another (no cross-process invalidation without PostgreSQL)",
            settings.WORKERS,
        )
        return 1
    return settings.WORKERS


@contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """With several workers, a directory where each keeps its metric values, so /metrics from
    any of them reports all (prometheus-client's multiprocess mode), removed at exit. Set before
    prometheus-client is imported: it chooses its mode then."""
    if workers == 1:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="algoways-metrics-") as path:
        os.environ[MULTIPROCESS_ENV] = path
        try:
            yield
        finally:
            os.environ.pop(MULTIPROCESS_ENV, None)


def _serve() -> None:
    import uvicorn

    from service import prebuilt_index
    from service.logs import configure_logging
    from service.server import (
        LimitedHttpToolsProtocol,
        forked_workers,
        import_app_for_workers,
        pause_collector_for_imports,
        start_key_material,
    )

    settings = get_settings()
    # First, while this process has no thread: the index builder is a fork of it.
    with prebuilt_index.building(settings, settings.WORKERS):
        configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT).stop()
        # This process's own lines (start-up, the one-worker notice) are written directly; only
        # access lines go through the writer thread, stopped here so that a worker is forked
        # from a process without it. The app factory sets logging up in each serving process.
        workers = _workers(settings)
        signal.signal(signal.SIGTERM, _ignore_signal)

        def run() -> None:
            uvicorn.run(
                "service.main:app_from_env",
                factory=True,
                host=settings.HOST,
                port=settings.PORT,
                http=LimitedHttpToolsProtocol,
                log_config=None,
                proxy_headers=True,
                timeout_graceful_shutdown=30,
                workers=workers,
            )

        with _metrics_directory(workers):
            if workers == 1:
                pause_collector_for_imports()  # this process imports the app next
                start_key_material(settings)
                run()
            else:
                import_app_for_workers(settings)
                with forked_workers():
                    run()


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
    legacy = sub.add_parser(
        "import-legacy", help="bring an in-process install's SQLite files into this database"
    )
    legacy.add_argument("--db", required=True, help="the install's openalgo.db")
    legacy.add_argument("--logs", help="its logs.db (traffic logs, IP bans, trackers)")
    legacy.add_argument("--latency", help="its latency.db")
    legacy.add_argument("--dry-run", action="store_true", help="read and validate; write nothing")
    legacy.add_argument("--legacy-env", help="the install's .env (API_KEY_PEPPER, FERNET_SALT)")
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
        elif args.command == "import-legacy":
            from service.legacy.run import run_cli

            return run_cli(get_settings(), args)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
