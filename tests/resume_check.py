"""The exact-resume check the trainer tests share: a run stopped after some epochs and resumed."""

from __future__ import annotations


def stopped_and_resumed(make_trainer, run_dir, stop_epoch: int, epochs: int):
    """The trainer `make_trainer(run_dir, epochs)` after a run in `run_dir` trained to `stop_epoch`
    (by `make_trainer(run_dir, stop_epoch)`), was rebuilt for `epochs`, resumed from its checkpoint
    (asserting that it restarts at `stop_epoch`) and trained to the end. Tests compare it with an
    uninterrupted run of `epochs` epochs."""
    make_trainer(run_dir, stop_epoch).train()
    resumed = make_trainer(run_dir, epochs)
    resumed.resume(run_dir)
    assert resumed.epoch == stop_epoch
    resumed.train()
    return resumed
