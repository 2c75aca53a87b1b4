"""Convert a UI-format ComfyUI workflow (what people drag in) into API format (POST /prompt).

Written from the frontend's rules, independently of workflows/build_workflows.py, so the tests can
check the two formats of every example workflow against each other:
- frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) and muted or bypassed nodes
  (mode 2 / 4) are not sent;
- a linked input becomes [source node id, output slot];
- `widgets_values` lists the node's widget inputs in definition order (required, then optional),
  skipping the ones whose input is linked; an INT with a "control after generate" widget
  (`control_after_generate: true`, or an INT named seed / noise_seed unless the flag is false)
  is followed by that widget's value, which is not sent.
"""

from __future__ import annotations

from typing import Any

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(info: dict[str, Any]):
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        specs = (info.get("input") or {}).get(section) or {}
        for name in order.get(section) or list(specs):
            spec = specs[name]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            yield name, spec[0], opts


def _is_widget(typ, opts) -> bool:
    return not opts.get("forceInput") and (isinstance(typ, list) or typ in WIDGET_TYPES)


def _has_control(name, typ, opts) -> bool:
    flag = opts.get("control_after_generate")
    if flag is None:
        return typ == "INT" and name in ("seed", "noise_seed")
    return bool(flag)


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any], fill_defaults: bool = False) -> dict[str, Any]:
    """API format of a UI workflow. fill_defaults: a workflow saved before a node gained widgets at
    the end has fewer values; like the front end, give those widgets their defaults (otherwise
    missing values are an error)."""
    links = {link[0]: link for link in workflow.get("links", [])}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node {node['id']}: unknown node type {node['type']!r}")
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                link = links[inp["link"]]
                src = nodes[link[1]]
                if src["type"] in FRONTEND_ONLY:
                    raise ValueError(f"node {node['id']}: input {inp['name']} comes from a {src['type']}; not supported here")
                linked[inp["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values") or [])
        inputs, i = {}, 0
        for name, typ, opts in _inputs(info):
            if name in linked:
                inputs[name] = linked[name]
                continue
            if not _is_widget(typ, opts):
                continue
            if i >= len(values):
                if fill_defaults and "default" in opts:
                    inputs[name] = opts["default"]
                    continue
                raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
            inputs[name] = values[i]
            i += 1 + (1 if _has_control(name, typ, opts) else 0)
        if i != len(values) and not (fill_defaults and i > len(values)):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, {i} expected")
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt
