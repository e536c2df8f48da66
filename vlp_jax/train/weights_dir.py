"""A weights-only workdir: imported parameters where `model.init_from` reads a run's.

Importers (models/import_open_clip.py, import_hf_lm.py) write the parameters as the
trainer's checkpoints hold them, step 0 of WORKDIR/checkpoints with an orbax `state` item of
{"params": ...}, so that imported weights and vlp_jax runs are named the same way
(`model.init_from=WORKDIR`). It is not a run: there is nothing to resume.
"""
import os

import orbax.checkpoint as ocp


def refuse_existing(out):
  """ValueError unless `out` is new or an empty folder: nothing is ever overwritten."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ValueError(f"--out={out} exists and is not empty: nothing is overwritten")


def write(out, params, step=0, family_state=None):
  """Saves `params` (nested dicts of numpy or jax arrays; sharded ones are written by each
  host) as `step` of out/checkpoints, with the family state when given (an export's)."""
  item = {"params": params}
  if family_state is not None:
    item["family_state"] = family_state
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  manager = ocp.CheckpointManager(
      os.path.join(out, "checkpoints"), item_handlers={"state": ocp.StandardCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=True))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(item)))
  manager.wait_until_finished()
  manager.close()
  return out
