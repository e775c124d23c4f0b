"""Replay a request once when its transaction lost a serialization race or a deadlock.

PostgreSQL aborts one of two transactions that cannot both commit as if they ran one after the
other (SQLSTATE 40001) or that wait on each other (40P01), and the remedy is to run the loser
again. The request's transaction is the unit here: it was rolled back as a whole, so running the
whole request again is safe. The exception handler (service/errors.py) asks for the replay by
marking the request's scope; this wrapper then drops that 503 unsent and runs the app once more
on the same request, its body replayed from what the first attempt read. A second failure is
answered with the 503.

Mounted inside the middleware that authenticates and counts requests, so a replay is neither
re-authenticated nor counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "algoways.replay"
# A body larger than this is not kept for a replay (uploads would double their memory).
DEFAULT_MAX_REPLAY_BYTES = 1 << 20


@dataclass(slots=True)
class _Replay:
    allowed: bool = True  # the first attempt, and its body is still held in full
    wanted: bool = False


def ask_for_replay(scope: Scope) -> bool:
    """Ask the wrapper to run this request again; False if it will not (already replayed,
    body too large, or no wrapper mounted), so the caller's response is the answer."""
    replay = scope.get(SCOPE_KEY)
    if not isinstance(replay, _Replay) or not replay.allowed:
        return False
    replay.wanted = True
    return True


class ReplayOnSerializationFailure:
    def __init__(self, app: ASGIApp, *, max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES) -> None:
        self.app = app
        self.max_replay_bytes = max_replay_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or SCOPE_KEY in scope:  # mounted twice: the outer one replays
            await self.app(scope, receive, send)
            return
        replay = _Replay()
        scope[SCOPE_KEY] = replay
        # Routing writes what it matched into the scope; the replay starts from the request.
        as_received = dict(scope)
        received: list[Message] = []
        size = 0

        async def recording_receive() -> Message:
            nonlocal size
            message = await receive()
            if replay.allowed and message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_replay_bytes:
                    replay.allowed = False
                    received.clear()
                else:
                    received.append(message)
            return message

        dropping = False

        async def first_send(message: Message) -> None:
            nonlocal dropping
            if message["type"] == "http.response.start":
                dropping = replay.wanted and replay.allowed
                replay.allowed = False  # once an answer is chosen, it is final
            if not dropping:
                await send(message)

        await self.app(scope, recording_receive, first_send)
        if not dropping:
            return

        replay.wanted = False
        pending = iter(received)

        async def replaying_receive() -> Message:
            message = next(pending, None)
            return message if message is not None else await receive()

        await self.app(dict(as_received), replaying_receive, send)
