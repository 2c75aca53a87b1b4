"""FDFO Human Picks: the artist's picks as the reward (fdfo_core.rewards.human_picks).

The node builds the reward; the FDFO Trainer asks it for each epoch's pairs, and the picking
panel (web/fdfo_picks.js, served from this package's WEB_DIRECTORY) shows them in the front end.
"""

from __future__ import annotations

import torch

from ..fdfo_core.rewards import RewardError
from .common import CATEGORY, REWARD
from .picks_server import HUB, publish
from .reward_nodes import path_input, widget_option

UNPICKED = {"drop": "drop", "preference model": "preference"}


class FDFOHumanPicksReward:
    CATEGORY = f"{CATEGORY}/rewards"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("Your picks as the reward: connect it to the FDFO Trainer (the only node that asks for pairs).",)
    FUNCTION = "load"
    DESCRIPTION = (
        "Train by picking: while the FDFO Trainer runs, each epoch's pairs appear in the FDFO picking panel. Press 1 "
        "(left is better), 2 (right), space (the same) or s (skip). The pick is the pair's reward difference (+1 / -1 "
        "/ 0; a skipped pair is dropped). Every click is saved at once to output/fdfo/<lora name>/picks.jsonl; a resumed "
        "run keeps them. Mixed mode: pick the first N pairs of each epoch and let a preference model, refitted on your "
        "picks every epoch, score the rest.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..fdfo_core.rewards.image_encoders import ENCODER_KINDS

        return {"required": {
            "human_pairs_per_epoch": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": (
                "How many pairs of each epoch you pick (the first N); 0 = all of them. The rest are handled as "
                "'unpicked' says.")}),
            "timeout_minutes": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10000.0, "step": 0.5, "tooltip": (
                "How long the trainer waits for your picks each epoch; 0 = as long as it takes. Pairs still unpicked "
                "then are handled as 'unpicked' says. 'Go on without the rest' in the panel ends the wait at once.")}),
            "unpicked": (list(UNPICKED), {"default": "drop", "tooltip": (
                "Pairs you did not pick: drop them, or let a preference model (Bradley-Terry on image embeddings, "
                "refitted on all your picks every epoch) score them.")}),
            "encoder": (list(ENCODER_KINDS), {"default": "clip", "tooltip": (
                "Image embeddings of the preference model (used with unpicked = preference model).")}),
            "encoder_path": path_input("Encoder weights folder (preference model)"),
            "head": (["linear", "mlp"], {"default": "linear", "tooltip": "The preference model's head (linear suits few picks)."}),
            "min_picks": ("INT", {"default": 8, "min": 1, "max": 100000, "tooltip": (
                "The preference model scores pairs once it has been fitted on at least this many picks and its "
                "held-out accuracy is measured and beats always answering one side (before that, unpicked pairs are "
                "dropped, and the log says why).")}),
            "device": (["auto", "cpu"], {"default": "auto", "tooltip": "Where the preference model's encoder runs."}),
        }}

    def load(self, human_pairs_per_epoch, timeout_minutes, unpicked, encoder, encoder_path, head, min_picks, device):
        from ..fdfo_core.rewards.human_picks import HumanPicksReward
        from ..fdfo_core.rewards.image_encoders import load_image_encoder
        from ..fdfo_core.rewards.preference import PreferenceModel
        from .common import torch_device

        mode = UNPICKED.get(unpicked)
        if mode is None:
            raise RewardError(f"human picks: unpicked must be one of {', '.join(UNPICKED)}, got {unpicked!r}")
        preference = None
        if mode == "preference":
            with torch.inference_mode(False):
                try:
                    enc = load_image_encoder(encoder, widget_option(encoder_path), None, device=torch_device(device),
                                             reward="preference")
                except RewardError:
                    raise
                except Exception as e:
                    raise RewardError(f"human picks: the {encoder} encoder could not be loaded: {type(e).__name__}: {e}") from e
                preference = PreferenceModel(enc, hidden=64 if head == "mlp" else 0)
        return (HumanPicksReward(hub=HUB, publish=publish, human_pairs=human_pairs_per_epoch,
                                 timeout=60.0 * float(timeout_minutes), unpicked=mode, preference=preference,
                                 min_picks=min_picks),)


NODES = {"FDFOHumanPicksReward": (FDFOHumanPicksReward, "FDFO Human Picks")}
