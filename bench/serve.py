"""Serve an app with exactly the uvicorn settings the service uses.

`python -m bench.serve TARGET [--workers N]` asks the service how it would call `uvicorn.run`
(by running `python -m service serve` with `uvicorn.run` replaced by a recorder), then serves
TARGET with those same options: loop, http, logging, proxy headers, graceful shutdown and,
once the service has a WORKERS setting, workers. The floors and the service variants therefore
never drift from the service's own settings; `--workers` overrides the worker count for a
service that does not have the setting yet.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from unittest import mock

import uvicorn

TARGETS = {
    "service": "service.main:app_from_env",
    "bare": "bench.floors:bare_app",
    "asyncpg": "bench.floors:asyncpg_app",
    "routes-flat": "bench.extra_routes:flat_app",
    "routes-nested": "bench.extra_routes:nested_app",
}


def service_uvicorn_options() -> dict[str, Any]:
    """The keyword arguments `python -m service serve` passes to `uvicorn.run`, and its app."""
    from service.__main__ import main as service_main

    captured: dict[str, Any] = {}

    def record(app: object, **options: Any) -> None:
        captured.update(options, app=app)

    with mock.patch.object(uvicorn, "run", record):
        code = service_main(["serve"])
    if code or "app" not in captured:
        raise SystemExit(f"`python -m service serve` did not reach uvicorn.run (exit {code})")
    return captured


def printable_options() -> dict[str, Any]:
    """The service's uvicorn options with classes (the http protocol) named, for the report."""
    return {
        key: value if isinstance(value, str | int | float | bool | None) else _name(value)
        for key, value in service_uvicorn_options().items()
    }


def _name(value: Any) -> str:
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    options = service_uvicorn_options()
    options.pop("app")
    if args.workers is not None:
        options["workers"] = args.workers
    # Every target is an import string of an app factory, as the service's own is: uvicorn
    # needs an import string to start more than one worker.
    options["factory"] = True
    uvicorn.run(TARGETS[args.target], **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
