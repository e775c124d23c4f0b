"""Exit 0 when a PostgreSQL server answers at the URL given (argv[1]), 1 otherwise."""

import asyncio
import sys

import asyncpg
from sqlalchemy.engine import make_url


async def main(url: str) -> int:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except Exception as error:
        print(f"PostgreSQL at {make_url(url).render_as_string()}: {error}", file=sys.stderr)
        return 1
    await conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
