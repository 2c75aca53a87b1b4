"""The FDFO nodes and the ComfyUI backend inside a real ComfyUI, in-process (needs COMFYUI_ROOT).

The checks run in one subprocess with ComfyUI's interpreter (COMFYUI_PYTHON, default: this one),
tests/comfy_scripts/nodes_in_comfyui.py; each becomes one test here:
- the backend's velocity reproduces ComfyUI's own Euler sampler (different prompts in a batch,
  and prompts whose conditioning has different token counts);
- the Paired Sampler draws exactly the trainer's pairs;
- LoRA files (SD3 toy and a tiny Flux built with ComfyUI's Flux class) load through ComfyUI's LoRA
  loader with the velocity of the live adapter (each family against diffusers, both ways:
  tests/test_families.py);
- a model loaded with fp8 weights trains (fp32 LoRA), with the fingerprint of the default-dtype
  model (a run resumes across the two); on a scaled-fp8 checkpoint (v0.3.64 scaled-fp8 layers,
  v0.8.0 quantized layers that are no nn.Linear) the LoRA finds its targets and the hot MODEL, the
  file through LoraLoaderModelOnly and a hand merge s W_raw + dW agree;
- gradient checkpointing changes no gradient; training leaves the input MODEL untouched; resume
  is exact; Cancel keeps the checkpoint and a usable LoRA; a failing reward names itself; a reward
  failing for one micro-batch costs only its pairs; a size the model cannot make is refused;
- SD1.5-style (EPS) models, Flux.1 Fill (needs an image), video models and 4-channel VAEs are
  refused with clear messages that list the supported families;
- a resumed run with another seed, reward or upstream LoRA is refused by name (allow_run_changes
  records a branch); a full disk during a checkpoint reaches the node's error with the last
  checkpoint and the LoRA kept, and the next queue resumes.
- the prompt cache stays under its byte bound with the true SD3 / Flux conditioning shapes, a
  bound smaller than an epoch's prompts trains the same LoRA as an unbounded cache, and a bf16
  model's conditioning is stored in bf16 with a bit-identical velocity; the node logs the cache's
  first eviction once, after the epoch line;
- the deprecated one-node Trainer (old saved workflows) trains the same LoRA as FDFO Trainer +
  FDFO Training Options.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_scripts.toy_fixture import toy_model_env
from comfy_scripts.results import script_results

REPO = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
CHECKS = [
    "velocity_matches_comfy_sampler", "mixed_token_lengths_batch_exactly", "paired_sampler_is_the_trainers_epoch",
    "lora_file_equals_hot_adapter_sd3", "flux_lora_layout_and_file",
    "gradient_checkpointing_same_gradients", "training_node_end_to_end", "cancel_keeps_checkpoint_and_lora",
    "failing_reward_names_itself_and_keeps_checkpoint", "non_flow_model_is_refused",
    "image_conditioned_and_video_models_are_refused", "flux2_and_z_image_are_refused_with_a_clear_message",
    "mismatched_vae_is_refused",
    "fp8_weights_train", "cfg_training_runs", "prompt_cache_bounded_true_shapes", "prompt_cache_bound_same_training",
    "prompt_cache_stores_bf16_exactly", "legacy_trainer_node_trains_the_same_lora", "prompt_cache_note_logged_with_the_epoch_line",
    "resume_refuses_a_changed_run", "full_disk_reaches_the_node_error",
    "partial_reward_failure_drops_pairs_and_trains_on", "impossible_size_is_refused_with_sizes_that_work",
    "guardrails_in_the_trainer_node", "scaled_fp8_lora_acts_as_the_file",
    "flows_that_are_not_a_plain_velocity_are_refused", "fingerprint_sees_injected_patches",
    "dynamic_vram_weights_are_not_copied", "fingerprint_same_with_fp8_weights", "model_caches_are_off_in_sessions",
    "fp8_rounding_note_is_the_loaders_merge",
]

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT (and COMFYUI_PYTHON) to run the nodes inside ComfyUI"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("comfy_nodes")
    env = dict(os.environ, **toy_model_env(tmp_path_factory.getbasetemp()))
    env.setdefault("FDFO_TEST_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", env["FDFO_TEST_THREADS"])
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    proc = subprocess.run([python, str(REPO / "tests" / "comfy_scripts" / "nodes_in_comfyui.py"), COMFYUI_ROOT, str(work)],
                          cwd=str(work), env=env, capture_output=True, text=True, timeout=1800)
    return script_results(proc, "check")


@pytest.mark.parametrize("check", CHECKS)
def test_in_comfyui(results, check):
    assert check in results, f"{check} did not run"
    r = results[check]
    print(json.dumps(r, indent=1)[:3000])
    assert r["ok"], json.dumps(r, indent=1)[:5000]
