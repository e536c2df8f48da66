"""`model.init_from`: start a run from parts of another run's checkpoint (BLIP-2's frozen
image encoder and language model, a CLIP image tower under a new head).

`model.init_from = WORKDIR[:STEP]` (default step: the latest) names the run;
`model.init_from_map = "this/path:checkpoint/path,..."` maps parameter path prefixes of
this model to the checkpoint's ('/'-separated, under `params`). Empty: every parameter
whose path and shape match. Only parameters are read (orbax partial restore of the
`state` item that train/checkpoint.py writes); the optimizer and family state start
fresh from them. A path that is not there, or a shape that differs, is a one-line
ValueError naming it. Every host reads the chosen parameters whole into host memory, once,
before the sharded state is built from them.
"""
import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

FIELD = "model.init_from"
MAP_FIELD = "model.init_from_map"


def _split(spec):
  """(workdir, step or None) of WORKDIR[:STEP]."""
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit():
    return head, int(tail)
  return spec, None


def _parse_map(map_spec):
  pairs = []
  for item in map_spec.split(","):
    item = item.strip()
    if not item:
      continue
    dst, sep, src = item.partition(":")
    if not sep or not dst.strip("/") or not src.strip("/"):
      raise ValueError(f"Config field {MAP_FIELD!r}: {item!r} is not this/path:checkpoint/path")
    pairs.append((tuple(dst.strip("/").split("/")), tuple(src.strip("/").split("/"))))
  return pairs


def _name(path):
  return "/".join(path)


def _checkpoint_params(workdir, step):
  """(directory of the step, {path: shape} of its params, manager)."""
  directory = os.path.join(workdir, "checkpoints")
  directory = directory if "://" in directory else os.path.abspath(directory)
  if "://" not in directory and not os.path.isdir(directory):
    raise ValueError(f"Config field {FIELD!r}: no checkpoints in {directory}")
  manager = ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0))
  steps = sorted(manager.all_steps())
  if not steps:
    raise ValueError(f"Config field {FIELD!r}: no checkpoints in {directory}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"Config field {FIELD!r}: no checkpoint at step {step} in {directory}; "
                     f"available steps: {', '.join(map(str, steps))}")
  meta = manager.item_metadata(step)["state"]
  tree = getattr(meta, "tree", meta)
  params = flax.traverse_util.flatten_dict(dict(tree["params"]))
  shapes = {path: tuple(m.shape) for path, m in params.items()}
  return f"{directory}/{step}", step, shapes, manager


def plan(map_spec, wanted, saved, where):
  """{this model's path: checkpoint path} to load; ValueError naming what does not fit."""
  pairs = _parse_map(map_spec)
  if not pairs:
    chosen = {p: p for p in wanted if p in saved and saved[p] == wanted[p]}
    if not chosen:
      raise ValueError(f"Config field {FIELD!r}: no parameter of this model has the same "
                       f"path and shape in {where}")
    return chosen
  chosen = {}
  for dst, src in pairs:
    found = [p for p in saved if p[:len(src)] == src]
    if not found:
      raise ValueError(f"Config field {MAP_FIELD!r}: {_name(src)} is not a parameter path "
                       f"in {where}")
    for path in found:
      target = dst + path[len(src):]
      if target not in wanted:
        raise ValueError(f"Config field {MAP_FIELD!r}: {_name(target)} (from {_name(path)}) "
                         f"is not a parameter path of this model")
      if wanted[target] != saved[path]:
        raise ValueError(f"Config field {MAP_FIELD!r}: {_name(target)} has shape "
                         f"{wanted[target]} in this model and {saved[path]} at {_name(path)} "
                         f"in {where}")
      chosen[target] = path
  return chosen


def load(spec, map_spec, abstract_params):
  """{param path tuple: numpy array} for state.create, or None when `spec` is empty."""
  if not spec:
    return None
  workdir, step = _split(spec)
  where, step, saved, manager = _checkpoint_params(workdir, step)
  wanted = {p: tuple(x.shape) for p, x in
            flax.traverse_util.flatten_dict(dict(abstract_params)).items()}
  chosen = plan(map_spec, wanted, saved, where)
  sources = sorted(set(chosen.values()))
  item = {"params": flax.traverse_util.unflatten_dict({p: 0 for p in sources})}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)))["state"]
  manager.close()
  values = flax.traverse_util.flatten_dict(dict(restored["params"]))
  return {dst: np.asarray(values[src]) for dst, src in chosen.items()}
