"""The errors a page raises (uncaught exceptions) and logs (console.error), split into this
package's and the stock front end's own. Ours: anything whose message, stack or source address
names FDFO (the panel's script is served at /extensions/ComfyUI-FDFO/, its routes are /fdfo/...),
including a failed request to one of our routes (the browser logs "Failed to load resource" with
the route's address)."""

from __future__ import annotations


def is_ours(item: dict) -> bool:
    return any("fdfo" in str(item.get(k, "")).lower() for k in ("text", "stack", "url"))


class ErrorLog:
    def __init__(self, page) -> None:
        self.items: list[dict] = []
        page.on("pageerror", lambda e: self.items.append(
            {"kind": "exception", "text": str(e)[:800], "stack": (getattr(e, "stack", "") or "")[:1500], "url": ""}))
        page.on("console", lambda m: self.items.append(
            {"kind": "console", "text": m.text[:800], "url": (m.location or {}).get("url", "")}) if m.type == "error" else None)

    def clear(self) -> None:
        self.items.clear()

    def ours(self, kind: str) -> list[dict]:
        """This package's uncaught exceptions ("exception") or console errors ("console")."""
        return [i for i in self.items if i["kind"] == kind and is_ours(i)]

    def others(self) -> list[dict]:
        """The stock front end's own errors (reported, not ours to fix)."""
        return [i for i in self.items if not is_ours(i)][:20]
