"""Checkpoints with orbax: async saves every N steps, keep K, resume from the latest.

A checkpoint holds the whole train state (step, params, optimizer state, RNG) and the
input position of every host, so a resumed run continues exactly where the last one was.
"""
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class Checkpointer:

  def __init__(self, workdir, every, keep):
    directory = os.path.join(workdir, "checkpoints")
    # orbax takes local paths and gs:// URLs; only local ones need to be made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, create=True,
            enable_async_checkpointing=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, position, force=False):
    """Saves if `step` is on the interval (or `force`); `position` is this host's."""
    if step in self.manager.all_steps():
      return False
    positions = np.asarray(multihost_utils.process_allgather(np.asarray([position], np.int64)))
    saved = self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.StandardSave({"positions": positions.reshape(-1)})))
    if saved:
      logging.info("saving checkpoint at step %d", step)
    return saved

  def restore(self, abstract_state, shardings, step=None):
    """(state, this host's input position) from `step` (default: latest), or None."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
    positions = {"positions": np.zeros((jax.process_count(),), np.int64)}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.StandardRestore(positions)))
    found = np.asarray(restored["data"]["positions"])
    if found.shape[0] != jax.process_count():
      raise ValueError(f"Checkpoint {self.directory}/{step} was written by {found.shape[0]} "
                       f"processes; this run has {jax.process_count()}")
    logging.info("restored checkpoint at step %d", step)
    return restored["state"], int(found[jax.process_index()])

  def reached_preemption(self, step):
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


class StopSignal:
  """Turns SIGTERM (preemption notice, `kill`) into a request to save and exit cleanly.

  Single process only: with several processes, jax's preemption sync manager receives the
  signal and `Checkpointer.reached_preemption` makes every host stop at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will save a checkpoint and stop", signum)
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
