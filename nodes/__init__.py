"""The FDFO node classes (V1 `NODE_CLASS_MAPPINGS`, category "FDFO").

Importing this package imports no ComfyUI module: node code imports ComfyUI when it runs, so the
classes can be inspected and unit-tested without ComfyUI.
"""

from . import (picks_nodes, picks_server, prompt_nodes, reward_nodes, sampler_nodes, scoring_nodes, toy_nodes,
               trainer_nodes, training_options)
from ..fdfo_core.rewards import register_comfy_folder

_MODULES = (toy_nodes, prompt_nodes, reward_nodes, scoring_nodes, picks_nodes, sampler_nodes, trainer_nodes,
            training_options)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in _MODULES:
    for _key, (_cls, _title) in _module.NODES.items():
        NODE_CLASS_MAPPINGS[_key] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_key] = _title

# Inside ComfyUI, make models/fdfo_rewards a model folder type (a no-op elsewhere).
register_comfy_folder()
# Inside ComfyUI, the picking panel's routes (a no-op without a server).
picks_server.register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
