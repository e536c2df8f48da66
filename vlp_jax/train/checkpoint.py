"""Checkpoints with orbax: async saves every N steps, keep K, resume from the newest intact one.

A checkpoint holds the whole train state (step, params, optimizer state, RNG), the input
position of every host, so a resumed run continues exactly where the last one was, and
the config fields that shape the model and the data (train/fingerprint.py), so a resumed
run cannot silently become another model.

The save decision is made here, not by orbax: orbax's interval policy also saves the first
step it sees, and the positions must be gathered across hosts (a blocking collective) only
on the steps that are saved.
"""
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vlp_jax.train import fingerprint as fingerprint_lib

TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix of a step directory being written
DAMAGED_SUFFIX = ".damaged"


class MismatchError(ValueError):
  """The checkpoint is intact but is not this model (config or shapes): never a fallback."""


def _one_line(error, limit=240):
  text = " ".join(str(error).split())
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _path_str(path):
  """'params/text_tower/proj' for a key path of the state or of orbax's metadata tree."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _shapes(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
  return {_path_str(p): tuple(getattr(v, "shape", ())) for p, v in leaves if v is not None}


def _params_first(path):
  return (not path.startswith("params/"), path)


def _format_fields(fields, values):
  def value(v):
    return repr(v) if isinstance(v, str) and (not v or any(c in v for c in " ,;")) else str(v)
  return ", ".join(f"{k}={value(values.get(k))}" for k in fields)


def _all_hosts(ok):
  """True only if `ok` on every host, so all hosts take the same branch."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.all(np.asarray(flags)))


class Checkpointer:
  """Saves every `every` steps (and when forced), keeps the newest `keep`, restores.

  `every` < 1 means forced saves only and `keep` < 1 keeps one: the config rejects both,
  but neither may ever save off the interval or delete the newest checkpoint.

  `fingerprint`: fingerprint.fingerprint(config), stored with each checkpoint and compared
  on restore. `read_only` (evaluation, captioning): nothing in the workdir is created,
  written, moved or removed.
  """

  def __init__(self, workdir, every, keep, fingerprint=None, allow_config_change=False,
               read_only=False):
    directory = os.path.join(workdir, "checkpoints")
    # orbax takes local paths and gs:// URLs; only local ones need to be made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.every = every
    self.fingerprint = fingerprint
    self.allow_config_change = allow_config_change
    self.read_only = read_only
    self._saved = set()
    if not read_only:
      self._remove_unfinished()
    handlers = dict(state=ocp.StandardCheckpointHandler(),
                    data=ocp.StandardCheckpointHandler(), config=ocp.JsonCheckpointHandler())
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      # Never fewer than one kept: orbax's max_to_keep=0 deletes every checkpoint it writes.
      options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True,
                                             enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers,
                                         options=options)

  def _remove_unfinished(self):
    """Deletes step directories orbax left half-written (a kill during a save).

    Only orbax's temporary directories: finished steps and anything else stay.
    """
    root = epath.Path(self.directory)
    if jax.process_index() != 0 or not root.exists():
      return
    for path in root.iterdir():
      if TMP_MARK in path.name and path.is_dir():
        logging.warning("removing unfinished checkpoint %s (a save was interrupted)", path)
        path.rmtree()

  def latest_step(self):
    return self.manager.latest_step()

  def due(self, step, force=False):
    """Whether `save(step, ...)` saves: on the interval, or when forced."""
    return force or (self.every >= 1 and step % self.every == 0)

  def save(self, step, state, position_fn, force=False):
    """Saves on the interval (or when `force`d) unless `step` is already saved.

    `position_fn()` is this host's input position; it and the cross-host gather of all
    positions run only when this step is saved. (A plain int is accepted too.)
    """
    if self.read_only:
      raise RuntimeError(f"Checkpointer of {self.directory} is read-only")
    if not self.due(step, force) or step in self._saved or step in self.manager.all_steps():
      return False
    position = position_fn() if callable(position_fn) else position_fn
    positions = np.asarray(multihost_utils.process_allgather(np.asarray([position], np.int64)))
    items = dict(state=ocp.args.StandardSave(state),
                 data=ocp.args.StandardSave({"positions": positions.reshape(-1)}))
    if self.fingerprint is not None:
      items["config"] = ocp.args.JsonSave(self.fingerprint)
    # force: the decision above is the policy; orbax's own would add a save at the first step.
    saved = self.manager.save(step, force=True, args=ocp.args.Composite(**items))
    if saved:
      self._saved.add(step)
      logging.info("saving checkpoint at step %d", step)
    return saved

  def _step_dir(self, step):
    return f"{self.directory}/{step}"

  def restore(self, abstract_state, shardings, step=None):
    """(state, this host's input position) from `step`, or None when there is none.

    Without `step`: the newest checkpoint that can be read. Damaged newer ones are
    skipped with a warning and, unless read-only, renamed to `<step>.damaged` (never
    deleted) so that they are not picked again. A checkpoint of another model (config
    fingerprint or shapes) raises ValueError instead: older steps would be the same.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    available = ", ".join(map(str, sorted(steps))) or "none"
    if step is not None:
      if step not in steps:
        raise ValueError(f"No checkpoint at step {step} in {self.directory}; available "
                         f"steps: {available}")
      try:
        return self._load(step, abstract_state, shardings)
      except MismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"Checkpoint {self._step_dir(step)} is damaged ({_one_line(e)}); "
                         f"available steps: {available}") from e
    damaged = []
    for candidate in steps:
      error = None
      try:
        result = self._load(candidate, abstract_state, shardings)
      except MismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        error, result = e, None
      if _all_hosts(error is None):
        self._move_aside([s for s, _ in damaged])
        return result
      reason = _one_line(error) if error is not None else "unreadable on another host"
      logging.warning("checkpoint %s is damaged (%s); trying the step before it",
                      self._step_dir(candidate), reason)
      damaged.append((candidate, reason))
    if damaged:
      # Nothing readable: more likely this environment than every checkpoint, so nothing
      # is moved and the run does not silently start from scratch.
      newest, reason = damaged[0]
      raise ValueError(f"No checkpoint in {self.directory} can be restored: "
                       f"{self._step_dir(newest)}: {reason} (steps tried: {available})")
    return None

  def _load(self, step, abstract_state, shardings):
    self._check_config(step)
    metadata = self.manager.item_metadata(step)
    state_meta, data_meta = metadata.get("state"), metadata.get("data")
    if state_meta is None or data_meta is None:
      raise FileNotFoundError(f"no readable metadata for "
                              f"{'state' if state_meta is None else 'data'}")
    self._check_shapes(step, state_meta, abstract_state)
    hosts = _shapes(data_meta).get("positions", (0,))[0]
    if hosts != jax.process_count():
      raise MismatchError(f"Checkpoint {self._step_dir(step)} was written by {hosts} "
                          f"processes; this run has {jax.process_count()}")
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
    positions = {"positions": np.zeros((jax.process_count(),), np.int64)}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.StandardRestore(positions)))
    found = np.asarray(restored["data"]["positions"])
    logging.info("restored checkpoint at step %d", step)
    return restored["state"], int(found[jax.process_index()])

  def _check_config(self, step):
    """MismatchError naming the fields whose values differ from the checkpoint's."""
    if self.fingerprint is None:
      return
    if not (epath.Path(self._step_dir(step)) / "config").exists():
      logging.warning("checkpoint %s records no config (written before fingerprints); "
                      "its model and data fields cannot be checked", self._step_dir(step))
      return
    saved = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]
    if not isinstance(saved, dict):
      raise ValueError(f"config record is {type(saved).__name__}, not a JSON object")
    names = fingerprint_lib.differences(saved, self.fingerprint)
    if not names:
      return
    message = (f"Checkpoint {self._step_dir(step)} was trained with "
               f"{_format_fields(names, saved)}; this config has "
               f"{_format_fields(names, self.fingerprint)}")
    if not self.allow_config_change:
      raise MismatchError(message + " (pass --allow_config_change if this is deliberate)")
    logging.warning("%s; going on (--allow_config_change)", message)

  def _check_shapes(self, step, state_meta, abstract_state):
    """MismatchError naming a parameter whose shape or presence differs, before reading."""
    saved, wanted = _shapes(state_meta), _shapes(abstract_state)
    where = f"Checkpoint {self._step_dir(step)} does not fit this model"
    missing = sorted(set(wanted) - set(saved), key=_params_first)
    extra = sorted(set(saved) - set(wanted), key=_params_first)
    if missing or extra:
      parts = []
      for paths, what in ((missing, "in this model but not in the checkpoint"),
                          (extra, "in the checkpoint but not in this model")):
        if paths:
          more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
          parts.append(f"{paths[0]} is {what}{more}")
      raise MismatchError(f"{where}: {'; '.join(parts)}")
    differ = sorted((p for p in wanted if saved[p] != wanted[p]), key=_params_first)
    if differ:
      p = differ[0]
      more = f" (and {len(differ) - 1} more arrays)" if len(differ) > 1 else ""
      raise MismatchError(f"{where}: {p} has shape {saved[p]} in the checkpoint and "
                          f"{wanted[p]} in this model{more}")

  def _move_aside(self, steps):
    """Renames damaged step directories so orbax no longer lists them; never deletes."""
    if not steps or self.read_only:
      return
    if jax.process_index() == 0:
      for step in steps:
        source = epath.Path(self._step_dir(step))
        target = epath.Path(self._step_dir(step) + DAMAGED_SUFFIX)
        n = 1
        while target.exists():
          target = epath.Path(f"{self._step_dir(step)}{DAMAGED_SUFFIX}.{n}")
          n += 1
        source.rename(target)
        logging.warning("moved damaged checkpoint %s to %s", source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("vlp_jax_checkpoint_move_aside")
    self.manager.reload()

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
