"""`model.init_from`: start a run from parts of other runs' checkpoints (BLIP-2 stage 2: its
image encoder and Q-Former from stage 1, its language model from an LM run; a CLIP image
tower under a new head).

`model.init_from = "WORKDIR[:STEP];WORKDIR[:STEP]..."` (default step: the latest) names the
runs, each a run's workdir (also written vlp:WORKDIR), an export (export:DIR,
train/export.py) or a PyTorch-world checkpoint converted on the fly: open_clip:FILE (OpenAI
or open_clip CLIP; the heads and activation come from this config) or hf:DIR (a
transformers CLIP or SigLIP folder); `model.init_from_map = "MAP;MAP..."` pairs one map with each, by position, each map
`this/path:checkpoint/path,...` mapping parameter path prefixes of this model to that
checkpoint's ('/'-separated, under `params`). An empty map (or an empty `init_from_map`):
every parameter whose path and shape match. A parameter chosen from two runs is an error.

Paths are matched, mapped and reported unrolled (models/stacking.py): `block_3`, `layer_0`,
whether either side was trained with `model.scan` or not, and shapes are compared per
layer; a scanned model gets its stacks rebuilt from the layers. Layers past this model's
depth are not wanted (BLIP-2's image encoder is a CLIP ViT minus its last block). A scanned
stack must be loaded whole or not at all: it is one array.

Only parameters are read (orbax partial restore of the `state` item that train/checkpoint.py
writes); the optimizer and family state start fresh from them. A path that is not there, or
a shape that differs, is a one-line ValueError naming it. Every host reads the chosen
parameters whole into host memory, once, before the sharded state is built from them.
"""
import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlp_jax.models import stacking

FIELD = "model.init_from"
MAP_FIELD = "model.init_from_map"
RUN_SCHEMES = ("vlp", "export")  # orbax checkpoints: a run's workdir, an export's folder
IMPORTED = ("open_clip", "hf")  # converted by models/import_open_clip.py, import_hf_clip.py


def split_run(spec):
  """(workdir, step or None) of WORKDIR[:STEP]."""
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit():
    return head, int(tail)
  return spec, None


def _runs(spec, map_spec):
  """[(run, map)] of `spec`'s runs and the maps paired with them."""
  runs = [run.strip() for run in spec.split(";")]
  if not all(runs):
    raise ValueError(f"Config field {FIELD!r}: {spec!r} has an empty run between ';'")
  maps = map_spec.split(";") if map_spec.strip() else [""] * len(runs)
  if len(maps) != len(runs):
    raise ValueError(f"Config field {MAP_FIELD!r}: {len(maps)} ';'-separated maps for the "
                     f"{len(runs)} runs of {FIELD}")
  return list(zip(runs, maps))


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
  """(directory of the step, step, {path: ShapeDtypeStruct} of its params, manager)."""
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
    manager.close()
    raise ValueError(f"Config field {FIELD!r}: no checkpoints in {directory}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    manager.close()
    raise ValueError(f"Config field {FIELD!r}: no checkpoint at step {step} in {directory}; "
                     f"available steps: {', '.join(map(str, steps))}")
  meta = manager.item_metadata(step)["state"]
  tree = getattr(meta, "tree", meta)
  params = flax.traverse_util.flatten_dict(dict(tree["params"]))
  shapes = {path: jax.ShapeDtypeStruct(tuple(m.shape), getattr(m, "dtype", None) or "float32")
            for path, m in params.items()}
  return f"{directory}/{step}", step, shapes, manager


def _depths(wanted):
  """{(prefix, 'block' or 'layer'): layers} of this model's stacks, from unrolled paths."""
  depths = {}
  for path in wanted:
    found = stacking.layer_index(path)
    if found:
      prefix, kind, i = found
      depths[prefix, kind] = max(depths.get((prefix, kind), 0), i + 1)
  return depths


def _past_depth(path, depths):
  """Whether `path` is a layer past the depth of this model's stack there."""
  found = stacking.layer_index(path)
  return bool(found) and found[:2] in depths and found[2] >= depths[found[:2]]


def plan(map_spec, wanted, saved, where):
  """{this model's path: checkpoint path} to load, both unrolled; `wanted`, `saved`: {unrolled
  path: shape}. ValueError naming what does not fit."""
  pairs = _parse_map(map_spec)
  if not pairs:
    chosen = {p: p for p in wanted if p in saved and saved[p] == wanted[p]}
    if not chosen:
      raise ValueError(f"Config field {FIELD!r}: no parameter of this model has the same "
                       f"path and shape in {where}")
    return chosen
  depths = _depths(wanted)
  chosen = {}
  for dst, src in pairs:
    found = [p for p in saved if p[:len(src)] == src]
    if not found:
      scanned = set(src) & (set(stacking.STACKS) | {stacking.LAST})
      hint = " (paths are unrolled: block_N, layer_N)" if scanned else ""
      raise ValueError(f"Config field {MAP_FIELD!r}: {_name(src)} is not a parameter path "
                       f"in {where}{hint}")
    for path in found:
      target = dst + path[len(src):]
      if target not in wanted:
        if _past_depth(target, depths):
          continue
        raise ValueError(f"Config field {MAP_FIELD!r}: {_name(target)} (from {_name(path)}) "
                         f"is not a parameter path of this model")
      if wanted[target] != saved[path]:
        raise ValueError(f"Config field {MAP_FIELD!r}: {_name(target)} has shape "
                         f"{wanted[target]} in this model and {saved[path]} at {_name(path)} "
                         f"in {where}")
      chosen[target] = path
  return chosen


def _restore(manager, step, paths):
  """{checkpoint path: numpy array} of `paths` (as stored: scanned stacks whole)."""
  item = {"params": flax.traverse_util.unflatten_dict({p: 0 for p in paths})}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)))["state"]
  return flax.traverse_util.flatten_dict(dict(restored["params"]))


def _checkpoint_source(run):
  """(where, {unrolled path: shape}, read(unrolled paths) -> {path: numpy}) of a run's or an
  export's checkpoint."""
  workdir, step = split_run(run)
  where, step, saved_flat, manager = _checkpoint_params(workdir, step)
  origins = stacking.origins(saved_flat)
  saved = {p: tuple(x.shape) for p, x in stacking.unrolled(saved_flat).items()}

  def read(paths):
    try:
      values = _restore(manager, step, sorted({origins[p][0] for p in paths}))
    finally:
      manager.close()
    return {p: np.asarray(values[origins[p][0]] if origins[p][1] is None
                          else values[origins[p][0]][origins[p][1]]) for p in paths}
  return where, saved, read, manager.close


def _imported_source(kind, path, config_model):
  """The same for a PyTorch-world checkpoint, converted whole in host memory."""
  if not config_model:
    raise ValueError(f"Config field {FIELD!r}: {kind}:{path} needs the model config")
  if kind == "open_clip":
    from vlp_jax.models import import_open_clip as importer  # pylint: disable=g-import-not-at-top
    m = config_model
    state_dict = importer.load_state_dict(importer.checkpoint_file(path))
    fields = importer.config_from_state_dict(
        state_dict, m.vision_width // m.vision_heads, m.text_width // m.text_heads, m.activation)
    params = importer.clip_params(state_dict, fields, scan=False)
  else:
    from vlp_jax.models import import_hf_clip as importer  # pylint: disable=g-import-not-at-top
    params = importer.params_from_hf(path, importer.config_from_hf(path), scan=False)
  layers = stacking.unrolled(flax.traverse_util.flatten_dict(params))
  saved = {p: tuple(np.shape(x)) for p, x in layers.items()}
  return f"{kind}:{path}", saved, lambda paths: {p: np.asarray(layers[p]) for p in paths}, \
      lambda: None


def source_of(run, config_model=None):
  """`_checkpoint_source` or `_imported_source` of one run of model.init_from: WORKDIR[:STEP],
  vlp:WORKDIR[:STEP], export:DIR, open_clip:FILE or hf:DIR."""
  kind, sep, rest = run.partition(":")
  if sep and kind in IMPORTED:
    return _imported_source(kind, rest, config_model)
  if sep and kind in RUN_SCHEMES:
    run = rest
  return _checkpoint_source(run)


def scheme_path(run):
  """(scheme or "vlp", path) of one run of model.init_from, without the step."""
  kind, sep, rest = run.partition(":")
  if sep and kind in IMPORTED + RUN_SCHEMES:
    return kind, split_run(rest)[0] if kind in RUN_SCHEMES else rest
  return "vlp", split_run(run)[0]


def _read(run, map_spec, wanted, taken, config_model=None):
  """{this model's unrolled path: numpy array} from one run; `taken`: {path: run} so far."""
  where, saved, read, close = source_of(run, config_model)
  try:
    chosen = plan(map_spec, wanted, saved, where)
    for dst in sorted(chosen):
      if dst in taken:
        raise ValueError(f"Config field {MAP_FIELD!r}: {_name(dst)} is chosen from both "
                         f"{taken[dst]} and {run}")
  except ValueError:
    close()
    raise
  values = read(sorted(set(chosen.values())))
  out = {}
  for dst, src in chosen.items():
    out[dst] = values[src]
    taken[dst] = run
  return out


def load(spec, map_spec, abstract_params, config_model=None):
  """{param path tuple in this model's layout: numpy array} for state.create, or None when
  `spec` is empty. `config_model` (config.model) tells the open_clip importer the heads and
  activation, which its weights do not show."""
  if not spec:
    return None
  abstract = {p: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype) for p, x in
              flax.traverse_util.flatten_dict(dict(abstract_params)).items()}
  wanted = {p: tuple(x.shape) for p, x in stacking.unrolled(abstract).items()}
  layers, taken = {}, {}
  for run, run_map in _runs(spec, map_spec):
    layers.update(_read(run, run_map, wanted, taken, config_model))
  loaded = stacking.to_layout(layers, abstract)
  for path in abstract:
    parts = stacking.layers_of(path, abstract)
    have = [p for p in parts if p in layers]
    if have and path not in loaded:
      missing = next(p for p in parts if p not in layers)
      raise ValueError(f"Config field {MAP_FIELD!r}: {_name(have[0])} is loaded but not "
                       f"{_name(missing)}, and this model (model.scan) holds both in "
                       f"{_name(path)}: load every layer of it or none")
  return loaded


def _count(n):
  for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.1f}{unit}"
  return str(n)


def summary(loaded):
  """One line: arrays and values loaded under each top-level subtree (for the log)."""
  if not loaded:
    return "nothing"
  groups = {}
  for path, value in sorted(loaded.items()):
    arrays, values = groups.get(path[0], (0, 0))
    groups[path[0]] = (arrays + 1, values + int(np.prod(np.shape(value))))
  return ", ".join(f"{name}: {arrays} array{'s' * (arrays != 1)} ({_count(values)} values)"
                   for name, (arrays, values) in groups.items())
