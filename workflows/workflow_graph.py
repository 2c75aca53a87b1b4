"""The graph model behind the example workflows: node definitions read from ComfyUI's /object_info,
the nodes and links of one workflow, its layout on the canvas (the front end's geometry), and its
two formats (UI, what people drag in; API, what POST /prompt takes).

Used by workflows/build_workflows.py (the templates); knows nothing of FDFO's own nodes beyond
importing this checkout as a node pack for their definitions.

The widgets of a UI-format node are listed in `widgets_values` in the order of the node's
widget inputs (required, then optional), with one extra value after an INT that has a
"control after generate" widget (the frontend adds one when the input sets
`control_after_generate`, and to INTs named seed / noise_seed unless it is set to false).
"""

from __future__ import annotations

import json
import math
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
#: Stock node definitions (not directly in workflows/: ComfyUI lists every workflows/*.json as a template).
STOCK_INFO = REPO / "workflows" / "reference" / "stock_object_info.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
#: Frontend-only node types: in UI workflows, never sent to the server.
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")



# --- node definitions (from /object_info) ----------------------------------------------------------


def input_specs(info: dict[str, Any]) -> list[tuple[str, Any, dict]]:
    """[(name, type, options)] of a node in widget order (required, then optional)."""
    out = []
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        inputs = info.get("input", {}).get(section, {}) or {}
        names = order.get(section) or list(inputs)
        for name in names:
            spec = inputs[name]
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def is_widget(typ: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def has_control_widget(name: str, typ: Any, opts: dict) -> bool:
    """Does the frontend add a 'control after generate' widget after this input's widget?"""
    if typ != "INT" and not isinstance(typ, list) and typ != "COMBO":
        return False
    flag = opts.get("control_after_generate")
    if flag is None:
        return typ == "INT" and name in ("seed", "noise_seed")
    return bool(flag)


def socket_type(typ: Any) -> str:
    return "COMBO" if isinstance(typ, list) else str(typ)


# --- graph description -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    node: int
    slot: int
    type: str


@dataclass
class Node:
    id: int
    type: str
    title: str | None
    values: dict[str, Any]
    pos: tuple[float, float] | None = None
    size: tuple[float, float] | None = None
    text: str | None = None  # Note nodes
    #: Natural sizes (w, h) of the images the node shows after a run, and the smallest scale at
    #: which they must show (the front end never enlarges an image; 1.0 = pixel for pixel).
    images: list[tuple[int, int]] = field(default_factory=list)
    min_scale: float = 1.0
    progress_text: bool = False  # the node shows a progress text during and after a run
    collapsed: bool = False

    outputs: list[tuple[str, str]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Out:
        for i, (n, t) in enumerate(self.outputs):
            if n == name:
                return Out(self.id, i, t)
        raise KeyError(f"{self.type} has no output {name!r}; outputs: {[n for n, _ in self.outputs]}")


# The front end's geometry (ComfyUI front end 1.27, LiteGraph): node bodies are measured below the
# title bar; the image preview widget is at least 220 high, with a "w × h" line under the image.
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_ROW = 24
MULTILINE_HEIGHT = 54
WIDGET_MARGIN = 8
PROGRESS_TEXT_HEIGHT = 58
IMAGE_MIN_HEIGHT = 220
IMAGE_SIZE_TEXT = 15
IMAGE_SLACK = 6
MIN_WIDTH = 300
GAP = 20
#: The part of the canvas that every supported front end leaves in view in the browser test's
#: window (1700 x 1000): left, top, right, bottom in screen pixels from the canvas's top-left corner.
#: Front end 1.27 (ComfyUI v0.3.64) puts its menu bar (78 high) and side bar (64 wide) beside the
#: canvas, whose visible part is then 1636 x 922; 1.35 (v0.8.0) and 1.58 draw the canvas under the
#: whole window and lay over it their workflow tabs (36 high), the breadcrumb and the Run bar in
#: the top corners (to 88 high) and the side bar (58 wide). Each template's offset puts its graph's
#: top-left corner at (left, top) and its zoom fits the rest in, a little above the bottom.
VIEW_BOX = (62, 92, 1636, 922)
BOTTOM_MARGIN = 10
#: The canvas's bottom-right corner (from these x, y on, in the same pixels) holds the zoom and view
#: buttons (1.27: from 1316, 860; 1.58: from 1448, 950): no node reaches into it.
BUTTONS_CORNER = (1310, 850)


def images_box(images: list[tuple[int, int]], scale: float = 1.0) -> tuple[float, float]:
    """Width and height that show `images` at `scale`: one image as it is, several images of one
    size in a near-square grid (the front end's layout for a batch)."""
    if not images:
        return (0.0, 0.0)
    if len(images) == 1:
        return (images[0][0] * scale, images[0][1] * scale)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = max(i[0] for i in images), max(i[1] for i in images)
    return (cols * w * scale, rows * h * scale)


class Graph:
    def __init__(self, name: str, object_info: dict[str, Any], zoom: float = 0.75):
        self.name = name
        self.info = object_info
        self.nodes: list[Node] = []
        self.zoom = zoom

    @property
    def offset(self) -> tuple[float, float]:
        """The canvas offset (graph units) that puts the graph's top-left corner at VIEW_BOX's."""
        x0, y0, _, _ = self.bounds()
        return (round(VIEW_BOX[0] / self.zoom - x0, 1), round(VIEW_BOX[1] / self.zoom - y0, 1))

    def bounds(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 of all node boxes, title bars included."""
        boxes = [(n.pos[0], n.pos[1] - TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + (0 if n.collapsed else n.size[1]))
                 for n in self.nodes]
        return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))

    def fits_view(self) -> bool:
        """Every node box inside VIEW_BOX (BOTTOM_MARGIN above its bottom) at the template's zoom and
        offset, and none reaching into BUTTONS_CORNER."""
        x0, y0, x1, y1 = self.bounds()
        ox, oy = self.offset
        left, top, right, bottom = VIEW_BOX
        z = self.zoom
        if not ((x0 + ox) * z >= left - 0.5 and (y0 + oy) * z >= top - 0.5 and (x1 + ox) * z <= right
                and (y1 + oy) * z <= bottom - BOTTOM_MARGIN):
            return False
        cx, cy = BUTTONS_CORNER
        return not any((n.pos[0] + n.size[0] + ox) * z > cx and (n.pos[1] + (0 if n.collapsed else n.size[1]) + oy) * z > cy
                       for n in self.nodes)

    def add(self, type_: str, title: str | None = None, **values) -> Node:
        info = self.info.get(type_)
        if info is None:
            raise KeyError(f"node type {type_!r} is not in the object info")
        specs = {n: (t, o) for n, t, o in input_specs(info)}
        unknown = set(values) - set(specs)
        if unknown:
            raise KeyError(f"{type_} has no input(s) {sorted(unknown)}; inputs: {list(specs)}")
        node = Node(len(self.nodes) + 1, type_, title, values)
        node.outputs = list(zip(info.get("output_name") or info["output"], [str(t) for t in info["output"]]))
        self.nodes.append(node)
        return node

    def note(self, text: str, height: float = 200) -> Node:
        node = Node(len(self.nodes) + 1, "Note", None, {}, size=(0, height), text=text)
        self.nodes.append(node)
        return node

    # --- layout ------------------------------------------------------------------------------------

    def shows(self, node: Node, images: list[tuple[int, int]], min_scale: float = 1.0, progress_text: bool = False) -> Node:
        """Declare the images `node` shows after a run (natural sizes), so the layout reserves room."""
        node.images, node.min_scale, node.progress_text = [tuple(map(int, i)) for i in images], min_scale, progress_text
        return node

    def column(self, x: float, width: float, nodes: list, y: float = 0.0) -> float:
        """Stack nodes top-down from `y` (the top of the first title bar) at `x`, each `width` wide
        (or wider when its images need it) and as tall as its widgets and images need; an item
        may be (node, body height) to make a node taller. Returns the bottom of the column."""
        for item in nodes:
            node, height = item if isinstance(item, tuple) else (item, None)
            w, h = self.body_size(node)
            node.pos = (x, y + TITLE_HEIGHT)
            node.size = (max(width, w), max(height or 0, h))
            y += (0 if node.collapsed else node.size[1]) + TITLE_HEIGHT + GAP
        return y

    def body_size(self, node: Node) -> tuple[float, float]:
        """The smallest body (below the title) that holds the node's widgets and its images at
        `min_scale`, as the front end lays them out: LiteGraph's computeSize for the widgets, then
        the widgets a run adds (the progress text, at least 58 high, and the image preview, at
        least 220 high); any height beyond their minimums is split evenly between those two."""
        if node.type == "Note":
            return (MIN_WIDTH, node.size[1])
        top = self._dynamic_top(node)
        if not node.images:
            return (MIN_WIDTH, top + (PROGRESS_TEXT_HEIGHT if node.progress_text else 0))
        w_img, h_img = images_box(node.images, node.min_scale)
        image = max(IMAGE_MIN_HEIGHT, h_img + IMAGE_SIZE_TEXT + IMAGE_SLACK)
        extra = image - IMAGE_MIN_HEIGHT
        text = PROGRESS_TEXT_HEIGHT + extra if node.progress_text else 0  # the even split
        return (max(MIN_WIDTH, w_img), top + text + image)

    def image_area_top(self, node: Node) -> float:
        """Where the image preview starts in a body laid out by `body_size`."""
        if not node.progress_text:
            return self._dynamic_top(node)
        return self._dynamic_top(node) + (self.body_size(node)[1] - self._dynamic_top(node)) / 2 - (IMAGE_MIN_HEIGHT - PROGRESS_TEXT_HEIGHT) / 2

    def _dynamic_top(self, node: Node) -> float:
        """Where the widgets a run adds begin: below the last widget (or the socket rows)."""
        h = self._widgets_height(node)
        return h - WIDGET_MARGIN if self._has_widgets(node) else h

    def _has_widgets(self, node: Node) -> bool:
        return any(is_widget(t, o) and not isinstance(node.values.get(n), Out) for n, t, o in input_specs(self.info[node.type]))

    def _widgets_height(self, node: Node) -> float:
        """LiteGraph's computeSize height: socket rows, then widget rows (multiline text boxes taller)."""
        n_in, height, any_widget = 0, 0.0, False
        for name, typ, opts in input_specs(self.info[node.type]):
            if isinstance(node.values.get(name), Out) or not is_widget(typ, opts):
                n_in += 1
                continue
            any_widget = True
            height += MULTILINE_HEIGHT if opts.get("multiline") else WIDGET_ROW
            if has_control_widget(name, typ, opts):
                height += WIDGET_ROW
        rows = max(n_in, len(node.outputs))
        return SLOT_HEIGHT * rows + height + (WIDGET_MARGIN + 6 if any_widget else 6)

    def layout_record(self) -> dict[str, Any]:
        """What the browser test checks after a run: per node, the images it shows and at what scale."""
        return {str(n.id): {"images": [list(i) for i in n.images], "min_scale": n.min_scale,
                            "image_top": self.image_area_top(n)}
                for n in self.nodes if n.images}

    # --- API format ----------------------------------------------------------------------------

    def to_api(self) -> dict[str, Any]:
        prompt = {}
        for node in self.nodes:
            if node.type in VIRTUAL_NODES:
                continue
            inputs = {}
            for name, typ, opts in input_specs(self.info[node.type]):
                if name not in node.values:
                    if is_widget(typ, opts):  # a widget left at its default
                        inputs[name] = default_value(typ, opts)
                    continue
                v = node.values[name]
                inputs[name] = [str(v.node), v.slot] if isinstance(v, Out) else v
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                    "_meta": {"title": node.title or display_name(self.info, node.type)}}
        return prompt

    # --- UI format -----------------------------------------------------------------------------

    def to_ui(self) -> dict[str, Any]:
        order = self._topological_order()
        unplaced = [n.id for n in self.nodes if n.pos is None]
        if unplaced:
            raise ValueError(f"workflow {self.name}: nodes {unplaced} have no place (use Graph.column)")
        links = []
        out_links: dict[tuple[int, int], list[int]] = {}
        ui_nodes = []
        for node in self.nodes:
            if node.type == "Note":
                ui_nodes.append({
                    "id": node.id, "type": "Note", "pos": list(node.pos), "size": list(node.size),
                    "flags": {}, "order": order.index(node.id), "mode": 0, "inputs": [], "outputs": [],
                    "properties": {}, "widgets_values": [node.text], "color": "#432", "bgcolor": "#653",
                })
                continue
            inputs, widgets = [], []
            for name, typ, opts in input_specs(self.info[node.type]):
                value = node.values.get(name)
                if isinstance(value, Out):
                    link_id = len(links) + 1
                    links.append([link_id, value.node, value.slot, node.id, len(inputs), value.type])
                    out_links.setdefault((value.node, value.slot), []).append(link_id)
                    entry = {"name": name, "type": socket_type(typ), "link": link_id}
                    if is_widget(typ, opts):
                        entry["widget"] = {"name": name}
                    inputs.append(entry)
                elif is_widget(typ, opts):
                    widgets.append(value if name in node.values else default_value(typ, opts))
                    if has_control_widget(name, typ, opts):
                        widgets.append("fixed")
                else:
                    inputs.append({"name": name, "type": socket_type(typ), "link": None})
            ui_nodes.append({
                "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size),
                "flags": {"collapsed": True} if node.collapsed else {},
                "order": order.index(node.id), "mode": 0, "inputs": inputs,
                "outputs": [{"name": n, "type": t, "links": []} for n, t in node.outputs],
                "properties": {"Node name for S&R": node.type}, "widgets_values": widgets,
            })
            if node.title:
                ui_nodes[-1]["title"] = node.title
        for ui in ui_nodes:
            for slot, out in enumerate(ui["outputs"]):
                out["links"] = out_links.get((ui["id"], slot), [])
                out["slot_index"] = slot
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {},
            "extra": {"ds": {"scale": self.zoom, "offset": list(self.offset)}, "fdfo_workflow": self.name,
                      "fdfo_layout": self.layout_record()},
            "version": 0.4,
        }

    def _topological_order(self) -> list[int]:
        deps = {n.id: {v.node for v in n.values.values() if isinstance(v, Out)} for n in self.nodes}
        order, done = [], set()
        while len(order) < len(self.nodes):
            ready = [i for i in deps if i not in done and deps[i] <= done]
            if not ready:
                raise ValueError(f"workflow {self.name} has a cycle")
            for i in sorted(ready):
                order.append(i)
                done.add(i)
        return order


def default_value(typ: Any, opts: dict) -> Any:
    if "default" in opts:
        return opts["default"]
    if isinstance(typ, list):
        return typ[0] if typ else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(typ)


def display_name(info: dict[str, Any], type_: str) -> str:
    return info.get(type_, {}).get("display_name") or type_


# --- node definitions of a ComfyUI and of this checkout ---------------------------------------------


def load_object_info(source: str) -> dict[str, Any]:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source.rstrip("/") + "/object_info", timeout=60) as r:
            return json.load(r)
    return json.loads(Path(source).read_text())


def import_nodepack(name: str = "comfyui_fdfo_nodepack"):
    """Import this checkout as a package (as ComfyUI does), without ComfyUI."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def combined_object_info(stock_source: str | None = None) -> dict[str, Any]:
    """Stock nodes from `stock_source` (default: the snapshot), FDFO nodes from this checkout."""
    info = load_object_info(stock_source or str(STOCK_INFO))
    pack = import_nodepack()
    info = {k: v for k, v in info.items() if k not in pack.NODE_CLASS_MAPPINGS}
    info.update(importlib_object_info(pack))
    return info


def importlib_object_info(pack) -> dict[str, Any]:
    import importlib

    return importlib.import_module(pack.__name__ + ".nodes.object_info").object_info()
