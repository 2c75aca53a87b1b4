"""The run around any training method: the loop (`trainer`), what defines a run and its records
(`definition`), checkpoints (`checkpoints`), held-out evaluation (`evaluation`), guardrails
(`guardrails`), data parallelism (`distributed`). Imports backends, rewards and everything below."""
