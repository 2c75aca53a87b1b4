"""The /object_info entry of a V1 node class, built as ComfyUI's server builds it (`server.node_info`).

Used to build and check the example workflows without a running ComfyUI, and by the tests.
"""

from __future__ import annotations

import json
from typing import Any


def node_info(key: str, cls: type, display_name: str | None = None) -> dict[str, Any]:
    inputs = cls.INPUT_TYPES()
    info = {
        "input": inputs,
        "input_order": {section: list(values.keys()) for section, values in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": key,
        "display_name": display_name or key,
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    # Round-trip through JSON: tuples become lists, exactly as the server sends them.
    return json.loads(json.dumps(info))


def object_info() -> dict[str, dict[str, Any]]:
    """Every FDFO node's entry, keyed by node type."""
    from . import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    return {k: node_info(k, c, NODE_DISPLAY_NAME_MAPPINGS.get(k)) for k, c in NODE_CLASS_MAPPINGS.items()}
