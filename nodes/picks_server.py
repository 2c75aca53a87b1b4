"""The picking panel's server side: routes on ComfyUI's PromptServer and websocket messages.

Thin: the state and the rules live in `fdfo_core.rewards.pairwise` (one `PickingHub` for the process).
The trainer waits in ComfyUI's execution thread; these handlers run in the server's event loop
and only hand answers to the hub (the pick's line is written to picks.jsonl in a worker thread,
so a slow disk never blocks the server). Routes (also under /api, as ComfyUI mirrors them):

- GET  /fdfo/picks/current                              the open rounds (a panel that (re)loads asks)
- GET  /fdfo/picks/image?session=&round=&index=&side=   one image of a pair (PNG)
- POST /fdfo/picks/answer {session, round, index, choice, expect, client}   choice: left / right / equal / skip;
  expect: the pair's choice as the window showed it (null: unpicked); a pair that holds something else
  (another tab answered it meanwhile) is refused with 409 and a message, never overwritten unseen
- POST /fdfo/picks/finish {session, round}              go on without the round's unpicked pairs

Websocket messages (`PromptServer.send_sync`, to every client): fdfo.picks.round (a new round),
fdfo.picks.update (after each answer), fdfo.picks.closed (the round ended).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from ..fdfo_core.rewards.pairwise import PickError, PickingHub, parse_answer
from .common import log

#: The picking sessions of this ComfyUI process (the Human Picks reward registers its runs here).
HUB = PickingHub()
EVENT_PREFIX = "fdfo.picks."
_registered = False


def _server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def publish(event: str, data: dict[str, Any]) -> None:
    """Send a picking event to every connected browser (nothing when no server runs: tests)."""
    server = _server()
    if server is not None:
        server.send_sync(EVENT_PREFIX + event, data)


def register_routes() -> bool:
    """Add the routes to PromptServer.instance.routes (before ComfyUI adds them to its app)."""
    global _registered
    server = _server()
    if _registered or server is None:
        return _registered
    from aiohttp import web

    routes = server.routes

    def error(e: Exception, status: int = 409):
        return web.json_response({"error": str(e)}, status=status)

    @routes.get("/fdfo/picks/current")
    async def current(request):
        return web.json_response({"rounds": HUB.open_rounds()})

    @routes.get("/fdfo/picks/image")
    async def image(request):
        q = request.rel_url.query
        try:
            path = HUB.image_path(q.get("session", ""), q.get("round", ""), int(q.get("index", "-1")), q.get("side", ""))
        except (PickError, ValueError) as e:
            return error(e, 404)
        if not path.is_file():
            return error(PickError(f"image {path.name} is missing"), 404)
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    @routes.post("/fdfo/picks/answer")
    async def answer(request):
        try:
            session, rnd, index, choice, expect, client = parse_answer(await request.json())
            # The pick is written (fsynced) to picks.jsonl before the answer is acknowledged.
            data = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(HUB.answer, session, rnd, index, choice, expect=expect, client=client))
        except PickError as e:
            return error(e)
        except ValueError as e:  # not JSON
            return error(PickError(f"the answer is not JSON: {e}"), 400)
        except Exception as e:  # a full disk: the click is not taken, the panel says so
            log.warning("FDFO: a pick could not be saved: %s", e)
            return error(e, 500)
        return web.json_response(data)

    @routes.post("/fdfo/picks/finish")
    async def finish(request):
        try:
            body = await request.json()
            data = HUB.finish(str(body.get("session")), str(body.get("round")))
        except (PickError, ValueError, AttributeError) as e:
            return error(e)
        return web.json_response(data)

    _registered = True
    return True
