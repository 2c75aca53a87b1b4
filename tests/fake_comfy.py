"""Just enough of ComfyUI to run the FDFO Trainer node's run logic in-process without it.

`install(monkeypatch, root)` puts fake `comfy`, `comfy.utils`, `comfy.sd`,
`comfy.model_management` and `folder_paths` modules in sys.modules, and replaces the node pack's
`nodes.comfy_backend` and `nodes.comfy_models` modules (which import ComfyUI) by ones whose
ComfyBackend is the tiny `image_flow.ImageFlowBackend`. A MODEL is {"seed": int}. Folders:
root/output, root/models/loras.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

from comfy_scripts.nodepack import PACKAGE, submodule

from image_flow import ImageFlowBackend


class Comfy:
    def __init__(self, root: Path):
        self.output = root / "output"
        self.loras = root / "models" / "loras"
        self.output.mkdir(parents=True, exist_ok=True)
        self.loras.mkdir(parents=True, exist_ok=True)
        self.backends: list[ImageFlowBackend] = []
        #: what the fake `comfy_models.distilled_checkpoint` answers: (family, distilled checkpoint or None)
        self.distilled: tuple = (None, None)
        self.tn = submodule("nodes.trainer_nodes")

    def values(self, **changes):
        """Every Trainer setting (flat); `train` splits them between the Trainer and its options node."""
        values = {}
        values.update(epochs=2, pairs_per_epoch=4, steps=4, width=16, height=16, learning_rate=5e-2, lora_rank=2,
                      lora_alpha=2.0, churn_strength=0.05, optimizer_steps_per_epoch=2, checkpoint_every=1,
                      sample_batch_size=4, train_batch_size=32, decode_batch_size=8, preview_count=2,
                      preview_every=1, lora_name="art")
        values.update(changes)
        return values

    def reward(self, metric: str = "brightness", quality: int = 95):
        return submodule("nodes.reward_nodes").FDFOSimpleReward().load(metric, quality)[0]

    def train(self, reward=None, prompts=("a red circle", "two blue squares"), model_seed: int = 0, judge=None, **changes):
        """The FDFO Trainer as the templates wire it: its own widgets (and the judge socket), the rest on
        FDFO Training Options."""
        opts = submodule("nodes.training_options")
        values = self.values(**changes)
        own = {o.name: o.default for o in opts.TRAINER_SETTINGS}
        trainer = {**own, **{k: v for k, v in values.items() if k in own}}
        options = opts.FDFOTrainingOptionsNode().build(**{k: v for k, v in values.items() if k not in own})[0]
        node = self.tn.FDFOTrainerNode()
        return node.train({"seed": model_seed}, None, None, reward if reward is not None else self.reward(),
                          list(prompts), options=options, judge=judge, unique_id="7", **trainer)

    def run_dir(self, name: str = "art") -> Path:
        return self.output / "fdfo" / name


def install(monkeypatch, root: Path) -> Comfy:
    comfy = Comfy(root)

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            pass

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    utils = module("comfy.utils", ProgressBar=ProgressBar)
    sd = module("comfy.sd", load_lora_for_models=lambda model, clip, lora, s1, s2: ({**model, "lora": lora}, clip))
    mm = module("comfy.model_management", throw_exception_if_processing_interrupted=lambda: None)
    module("comfy", utils=utils, sd=sd, model_management=mm)
    (root / "temp").mkdir(parents=True, exist_ok=True)
    module("folder_paths", get_output_directory=lambda: str(comfy.output),
           get_folder_paths=lambda kind: [str(comfy.loras)], get_temp_directory=lambda: str(root / "temp"))

    def make_backend(model, clip, vae, config, **kwargs):
        backend = ImageFlowBackend(model, clip, vae, config, **kwargs)
        comfy.backends.append(backend)
        return backend

    module(f"{PACKAGE}.nodes.comfy_backend", ComfyBackend=make_backend)
    module(f"{PACKAGE}.nodes.comfy_models", distilled_checkpoint=lambda model, graph=None, node_id=None: comfy.distilled)
    return comfy
