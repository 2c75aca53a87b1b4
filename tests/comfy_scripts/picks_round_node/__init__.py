"""A test-only ComfyUI extension (never shipped): opens picking rounds on the FDFO pack's hub
without a training run, so the browser tests can work the picking panel in seconds.

tests/comfy_scripts/server.py links this folder into a test ComfyUI's custom_nodes/ when asked
(`ComfyServer(extra_nodes=[...])`). Routes:

- POST /fdfo_test/round {pairs, missing: [[index, side], ...]}: closes the open test round and opens a
  new one of `pairs` pairs (distinct colours, each image 96 x 96 with its pair number); the image
  files named in `missing` are deleted, so the pack's image route answers 404 for them.
  Returns {session, round}.
- GET  /fdfo_test/log: every answer the session took, in order ({index, pair_id, choice}), and each
  pair's final choice.
- POST /fdfo_test/close: cancels the test round's wait (the panel is told the round closed).
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

NODE_CLASS_MAPPINGS: dict = {}
_state: dict = {}


def _picks_server():
    for name, module in list(sys.modules.items()):
        if name.endswith(".nodes.picks_server") and hasattr(module, "HUB") and hasattr(module, "publish"):
            return module
    raise RuntimeError("the FDFO pack's nodes.picks_server is not loaded")


def _picking(ps):
    return sys.modules[ps.__name__.rsplit(".nodes.", 1)[0] + ".fdfo_core.rewards.pairwise"]


def _close() -> None:
    old = _state.pop("current", None)
    if old is not None:
        old["stop"].set()
        old["thread"].join(10)


def _open(pairs: int, missing: list) -> dict:
    from PIL import Image, ImageDraw

    ps = _picks_server()
    picking = _picking(ps)
    _close()
    folder = Path(tempfile.mkdtemp(prefix="fdfo_test_round_"))
    items = []
    for i in range(pairs):
        paths = []
        for side, shade in (("left", 0), ("right", 1)):
            img = Image.new("RGB", (96, 96), ((37 * i) % 200 + 40 * shade, 90 + 20 * shade, (71 * i) % 200))
            ImageDraw.Draw(img).text((8, 8), f"{i + 1} {side}", fill=(255, 255, 255))
            path = folder / f"p{i:03d}-{side}.png"
            img.save(path)
            paths.append(path)
        items.append(picking.PickItem(pair_id=100 + i, prompt=f"test pair {i + 1}", left_image=paths[0], right_image=paths[1]))
    for index, side in missing:
        getattr(items[index], f"{side}_image").unlink()
    log: list = []
    session = picking.PickSession(publish=ps.publish,
                                  on_answer=lambda rnd, item, choice: log.append(
                                      {"index": rnd.items.index(item), "pair_id": item.pair_id, "choice": choice}))
    rnd = picking.PickRound(epoch=0, items=items, title="gesture test")
    stop = threading.Event()

    def cancel() -> None:
        if stop.is_set():
            raise InterruptedError("test round closed")

    def wait() -> None:
        try:
            session.wait(None, cancel, poll=0.05)
        except InterruptedError:
            pass
        finally:
            ps.HUB.remove(session)

    ps.HUB.add(session)
    session.open(rnd)
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    _state["current"] = {"session": session, "round": rnd, "log": log, "stop": stop, "thread": thread}
    return {"session": session.session_id, "round": rnd.round_id}


def _register() -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    from aiohttp import web

    routes = PromptServer.instance.routes

    @routes.post("/fdfo_test/round")
    async def open_round(request):
        body = await request.json()
        return web.json_response(_open(int(body.get("pairs", 4)), [tuple(m) for m in body.get("missing", [])]))

    @routes.get("/fdfo_test/log")
    async def read_log(request):
        cur = _state.get("current")
        if cur is None:
            return web.json_response({"answers": [], "choices": []})
        return web.json_response({"answers": list(cur["log"]), "choices": [it.choice for it in cur["round"].items],
                                  "round": cur["round"].round_id})

    @routes.post("/fdfo_test/close")
    async def close_round(request):
        _close()
        return web.json_response({"closed": True})


_register()
