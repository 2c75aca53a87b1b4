"""ComfyUI-FDFO: RL post-training of flow-matching text-to-image models with FDFO, as ComfyUI nodes.

ComfyUI imports this folder as a package. The nodes (`nodes/`) import the library (`fdfo_core/`)
relatively, so the node pack always runs its own copy of the library, and no module here imports
ComfyUI at import time (ComfyUI modules are imported when a node runs), so tools and tests can
import the package outside ComfyUI.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
# else: imported as a plain module, not a package. pytest does that when the checkout's folder
# name is not a Python identifier (a clone named ComfyUI-FDFO); the relative import would fail
# and stop every test, and nothing there needs the node mappings.
