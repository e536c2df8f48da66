"""`--mode=export`: a trained run's parameters as a folder that stands on its own.

  python main.py --mode=export --workdir=RUN --out=DIR [--step=N] [--config.export.dtype=bfloat16]

DIR holds what `vlp_jax.load(DIR)` and `model.init_from=export:DIR` read, and nothing of
training (no optimizer state, input positions or RNG):
  checkpoints/<step>/  orbax, item `state` = {"params": ...} (+ "family_state" with
                       export.family_state: momentum copies, queues), the layout of
                       train/weights_dir.py, so an export is read wherever a run is
  config.json          the run's config in the canonical layout (model.scan=False), with
                       nothing that points outside DIR (init_from, data.tokenizer)
  tokenizer files      as a run's workdir names them (data/tokenizer.py reads them there)
  family files         what the family's `prepare` reads (CatLIP's synsets.txt)
  manifest.json        family, step, parameter count, dtype, source run

Parameters come out unrolled (`block_0`, `block_1`, ... as model.scan=False holds them),
whatever layout the run trained with: the conversion is one jit on the run's own mesh, its
outputs sharded as the canonical model's, and orbax writes each host's shards; nothing is
gathered on one host. `export.format=open_clip` writes open_clip's files instead
(models/export_open_clip.py), from parameters gathered on the host: CLIPs are small.
"""
import datetime
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vlp_jax import config_lib, families
from vlp_jax.data import tokenizer as tokenizer_lib
from vlp_jax.data.tf_setup import tf
from vlp_jax.models import stacking
from vlp_jax.parallel import sharding
from vlp_jax.train import loop, state as state_lib, weights_dir

MANIFEST = "manifest.json"
FORMAT = "vlp_jax.export/1"


def canonical_config(config):
  """The config an export records: the unrolled layout and no paths outside the export."""
  c = config.copy_and_resolve_references()
  c.model.scan = False
  c.model.init_from = c.model.init_from_map = ""
  c.data.tokenizer = ""  # copied into the export under a workdir's name
  c.data.synsets = ""  # the same for CatLIP's vocabulary (Family.run_files)
  return c


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def rearrange(tree, abstract, dtype=None):
  """`tree` (any layer layout) in `abstract`'s layout, floating leaves cast to `dtype`;
  traceable, so it runs inside jit on sharded arrays. ValueError naming a missing path."""
  layers = stacking.unrolled(_flat(tree))
  target = _flat(abstract)
  out = stacking.to_layout(layers, target)
  missing = sorted(set(target) - set(out))
  if missing:
    raise ValueError(f"The checkpoint has no {'/'.join(missing[0])} (and {len(missing) - 1} "
                     f"more parameters of this model)")
  cast = lambda x: x.astype(dtype) if dtype and jnp.issubdtype(x.dtype, jnp.floating) else x
  return flax.traverse_util.unflatten_dict({p: cast(v) for p, v in out.items()})


def converter(canonical, eos_id, tx, mesh, family_state=False):
  """The jitted {"params"[, "family_state"]} -> the same in `canonical`'s layout and
  export.dtype, its outputs sharded as the canonical model's on `mesh`: each device slices
  and casts what it holds (tests/test_export_api.py counts no all-gather in it)."""
  family = families.get_family(canonical, eos_id)
  abstract, specs = state_lib.abstract_state(family, tx, canonical.seed, mesh.shape)
  names = ("params", "family_state") if family_state else ("params",)
  target = {k: getattr(abstract, k) for k in names}
  dtype = jnp.dtype(canonical.export.dtype)
  return jax.jit(lambda tree: {k: rearrange(v, target[k], dtype) for k, v in tree.items()},
                 out_shardings=sharding.named(mesh, {k: getattr(specs, k) for k in names}))


def export(config, workdir, out, step=None, allow_config_change=False):
  """Writes the export of `workdir`'s checkpoint (latest or `step`) to the new folder `out`;
  returns the manifest."""
  config_lib.validate(config)
  weights_dir.refuse_existing(out)  # checked before anything is read: nothing is overwritten
  s, state = loop.restore_for_reading(config, workdir, step, allow_config_change)
  s.checkpointer.close()
  step = int(state.step)
  e = config.export
  if e.format == "open_clip":
    return _open_clip(config, s, state, out, step)
  canonical = canonical_config(config)
  convert = converter(canonical, s.family.eos_id, s.tx, s.mesh,
                      e.family_state and state.family_state is not None)
  item = {"params": state.params}
  if e.family_state and state.family_state is not None:
    item["family_state"] = state.family_state
  with sharding.rules_context(), jax.set_mesh(s.mesh):
    item = convert(item)
  out = weights_dir.write(out, item["params"], step, item.get("family_state"))
  primary = jax.process_index() == 0
  manifest = dict(
      format=FORMAT, family=config.model.name, step=step, dtype=e.dtype,
      parameters=int(sum(np.prod(x.shape) for x in jax.tree.leaves(item["params"]))),
      family_state="family_state" in item, source=os.path.abspath(workdir),
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  if primary:
    _copy_run_files(s, workdir, out)
    _write_text(os.path.join(out, loop.CONFIG_FILE), config_lib.to_json(canonical))
    _write_text(os.path.join(out, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
  logging.info("exported step %d of %s to %s", step, workdir, out)
  return dict(manifest, out=out)


def _copy_run_files(s, workdir, out):
  """The tokenizer and the family's files, under the names a workdir gives them: a
  tokenizer trained here as tokenizer.model, any other kind as a tokenizer/ folder."""
  for name, source in s.family.run_files(workdir).items():
    loop.copy_file(source, os.path.join(out, name))
  if s.tokenizer is None:
    return
  if isinstance(s.tokenizer, tokenizer_lib.Tokenizer):
    loop.copy_file(s.tokenizer.model_path, os.path.join(out, loop.TOKENIZER_FILE))
  else:
    tokenizer_lib.copy_tokenizer(s.tokenizer, os.path.join(out, "tokenizer"))


def _write_text(path, text):
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text + "\n")


def _open_clip(config, s, state, out, step):
  """open_clip's files (a state dict and its model config) of a CLIP run."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from vlp_jax.models import export_open_clip  # pylint: disable=g-import-not-at-top
  if config.export.dtype != "float32":
    raise ValueError("Config field 'export.dtype': open_clip exports are float32")
  params = multihost_utils.process_allgather(state.params, tiled=True)  # CLIPs are small
  if jax.process_index() == 0:
    out = export_open_clip.write(out, params, config.model, eos_id=s.family.eos_id,
                                 eval_resize=config.data.eval_resize)
    # Where vlp_jax.load("open_clip:DIR") finds it; open_clip users make ids with it too.
    tokenizer_lib.copy_tokenizer(s.tokenizer, os.path.join(out, "tokenizer"))
  return dict(format="open_clip", family=config.model.name, step=step, out=os.path.abspath(out))
