"""One module per domain, each with `async def run(ctx: Context) -> list[Result]`."""
