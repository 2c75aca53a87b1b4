"""FDFO core: paired flow sampling and finite-difference flow optimization (framework-free).

Nothing here imports ComfyUI. diffusers / peft are imported only by `fdfo_core.backends`.
"""

__version__ = "0.1.0"
