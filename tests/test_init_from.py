"""model.init_from across parameter layouts (models/stacking.py) and from several runs.

Checkpoints hold random values in a tiny CLIP's parameter tree (3 image layers, 2 text
layers), saved by train/checkpoint.py; nothing is trained, so each test is a plan, a read
and exact comparisons.
"""
import functools

import flax
import jax
import numpy as np
import pytest
from flax import linen as nn

from tests.helpers import tiny_config
from vlp_jax import families
from vlp_jax.models import stacking
from vlp_jax.train import checkpoint, init_from

ENC = ("image_tower", "encoder")


@functools.lru_cache(maxsize=None)
def _abstract(scan, vision_depth=3):
  """Flat {path: ShapeDtypeStruct} of a tiny CLIP (pooled towers: scanned, each keeps its
  last layer as `last_block`)."""
  config = tiny_config(**{"mesh.data": 1, "model.scan": scan, "model.vision_depth": vision_depth,
                          "model.text_depth": 2})
  family = families.ClipFamily(config, 1)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), family.example_batch(1))
  params = nn.meta.unbox(jax.eval_shape(lambda b: family.init(jax.random.PRNGKey(0), b), batch))
  return flax.traverse_util.flatten_dict(params)


def _random(abstract, seed):
  rng = np.random.default_rng(seed)
  return {p: rng.standard_normal(x.shape).astype(np.float32) for p, x in abstract.items()}


def _save(workdir, flat):
  ckpt = checkpoint.Checkpointer(str(workdir), 1, 1)
  ckpt.save(1, {"params": flax.traverse_util.unflatten_dict(flat)}, 0)
  ckpt.wait()
  ckpt.close()
  return str(workdir)


def _load(spec, map_spec, scan, vision_depth=3):
  abstract = _abstract(scan, vision_depth)
  loaded = init_from.load(spec, map_spec, flax.traverse_util.unflatten_dict(abstract))
  for path, value in loaded.items():  # the model's own layout, whatever the checkpoint's
    assert value.shape == abstract[path].shape, path
  return loaded


def _layer(flat, prefix, i):
  """{rest of path: array} of layer i of the stack at `prefix`, read by hand: block_i, or
  blocks[i], or last_block after the scanned ones; {} past the stack."""
  n = len(prefix)
  under = {p[n:]: v for p, v in flat.items() if p[:n] == prefix}
  named = lambda name: {p[1:]: v for p, v in under.items() if p[0] == name}
  scanned = named("blocks")
  depth = next(iter(scanned.values())).shape[0] if scanned else 0
  if named(f"block_{i}"):
    return named(f"block_{i}")
  if i < depth:
    return {rest: v[i] for rest, v in scanned.items()}
  return named("last_block") if i == depth else {}


def _assert_layers_equal(ours, theirs, prefix, layers):
  for i in layers:
    a, b = _layer(ours, prefix, i), _layer(theirs, prefix, i)
    assert a and a.keys() == b.keys(), (prefix, i)
    for rest in a:
      np.testing.assert_array_equal(a[rest], b[rest], err_msg=f"{prefix} layer {i} {rest}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs with different values: `scanned` (blocks + last_block), `unrolled` (block_N), and
  `text` with a text tower only (as BLIP-2 stage 2 reads its LM from an LM run)."""
  scanned = _random(_abstract(True), 1)
  unrolled = _random(_abstract(False), 2)
  text = {p: v for p, v in _random(_abstract(False), 3).items() if p[0] == "text_tower"}
  return {name: (_save(tmp_path_factory.mktemp(name), flat), flat)
          for name, flat in (("scanned", scanned), ("unrolled", unrolled), ("text", text))}


def test_stacking_splits_and_rebuilds_both_stack_kinds():
  flat = {("t", "encoder", "blocks", "w"): np.arange(6.).reshape(3, 2),
          ("t", "encoder", "last_block", "w"): np.full(2, 9.),
          ("f", "layers", "k"): np.arange(4.).reshape(2, 2), ("scale",): np.float32(1)}
  layers = stacking.unrolled(flat)
  assert sorted(layers) == sorted([("t", "encoder", f"block_{i}", "w") for i in range(4)]
                                  + [("f", f"layer_{i}", "k") for i in range(2)] + [("scale",)])
  np.testing.assert_array_equal(layers["t", "encoder", "block_3", "w"], [9., 9.])
  np.testing.assert_array_equal(layers["f", "layer_1", "k"], [2., 3.])
  shapes = stacking.unrolled({p: jax.ShapeDtypeStruct(np.shape(v), np.float32)
                              for p, v in flat.items()})
  assert {p: v.shape for p, v in shapes.items()} == {p: np.shape(v) for p, v in layers.items()}
  back = stacking.to_layout(layers, flat)
  assert back.keys() == flat.keys()
  for path in flat:
    np.testing.assert_array_equal(back[path], flat[path])
  # Unrolled trees pass through; a stack missing a layer is left out of the result.
  assert stacking.unrolled(layers).keys() == layers.keys()
  del layers["t", "encoder", "block_1", "w"]
  assert sorted(stacking.to_layout(layers, flat)) == sorted(
      p for p in flat if p != ("t", "encoder", "blocks", "w"))


@pytest.mark.parametrize("source, scan", [("scanned", False), ("unrolled", True)])
def test_a_checkpoint_loads_into_the_other_layout_layer_by_layer(runs, source, scan):
  workdir, theirs = runs[source]
  loaded = _load(workdir, "", scan)
  assert loaded.keys() == _abstract(scan).keys()
  _assert_layers_equal(loaded, theirs, ENC, range(3))  # image: blocks[0:2] + last_block
  _assert_layers_equal(loaded, theirs, ("text_tower", "encoder"), range(2))
  for path, value in loaded.items():
    if "encoder" not in path:
      np.testing.assert_array_equal(value, theirs[path])


@pytest.mark.parametrize("scan", [False, True])
def test_a_shallower_model_loads_the_first_layers(runs, scan):
  """BLIP-2's image encoder: a ViT of depth L-1 from a checkpoint of depth L."""
  for source in ("scanned", "unrolled"):
    workdir, theirs = runs[source]
    loaded = _load(workdir, "image_tower:image_tower", scan, vision_depth=2)
    assert loaded.keys() == {p for p in _abstract(scan, 2) if p[0] == "image_tower"}
    _assert_layers_equal(loaded, theirs, ENC, range(2))
    assert not _layer(loaded, ENC, 2)


def test_two_runs_with_maps_on_unrolled_paths(runs):
  (scanned, s), (unrolled, u), (text, t) = runs["scanned"], runs["unrolled"], runs["text"]
  # The image tower from the scanned run, with its layer 0 replaced by the unrolled run's
  # layer 2; the text tower from the unrolled run; log_logit_scale from neither.
  loaded = _load(f"{scanned}:1;{unrolled}",
                 "image_tower/encoder/block_1:image_tower/encoder/block_1,"
                 "image_tower/encoder/block_2:image_tower/encoder/block_2,"
                 "image_tower/proj:image_tower/proj;"
                 "image_tower/encoder/block_0:image_tower/encoder/block_2,"
                 "text_tower:text_tower", scan=False)
  assert {p[0] for p in loaded} == {"image_tower", "text_tower"}
  assert ("image_tower", "cls") not in loaded
  _assert_layers_equal(loaded, s, ENC, [1, 2])
  for rest, value in _layer(loaded, ENC, 0).items():
    np.testing.assert_array_equal(value, _layer(u, ENC, 2)[rest])
  np.testing.assert_array_equal(loaded["image_tower", "proj", "kernel"],
                                s["image_tower", "proj", "kernel"])
  _assert_layers_equal(loaded, u, ("text_tower", "encoder"), range(2))
  # An empty item: everything that matches, from that run; into a scanned model.
  loaded = _load(f"{scanned};{text}", "image_tower:image_tower;", scan=True)
  assert {p[0] for p in loaded} == {"image_tower", "text_tower"}
  _assert_layers_equal(loaded, s, ENC, range(3))
  _assert_layers_equal(loaded, t, ("text_tower", "encoder"), range(2))
  np.testing.assert_array_equal(loaded["text_tower", "token_embedding"],
                                t["text_tower", "token_embedding"])


def test_errors_are_one_line_naming_the_field_and_unrolled_paths(runs):
  scanned, unrolled = runs["scanned"][0], runs["unrolled"][0]
  cases = [
      (f"{scanned};{unrolled}", "image_tower:image_tower", False,
       r"^Config field 'model.init_from_map': 1 ';'-separated maps for the 2 runs of "
       r"model.init_from$"),
      (f"{scanned};{unrolled}", "", False,
       r"^Config field 'model.init_from_map': image_tower/\S+ is chosen from both "
       rf"{scanned} and {unrolled}$"),
      (f"{scanned};{unrolled}", "image_tower:image_tower;image_tower/encoder:image_tower/encoder",
       True, r"^Config field 'model.init_from_map': image_tower/encoder/block_0/\S+ is chosen "
       r"from both"),
      (scanned, "image_tower/encoder/block_0:image_tower/encoder/block_2", True,
       r"^Config field 'model.init_from_map': image_tower/encoder/block_0/\S+ is loaded but "
       r"not image_tower/encoder/block_1/\S+, and this model \(model.scan\) holds both in "
       r"image_tower/encoder/blocks/"),
      (scanned, "image_tower/encoder/blocks:image_tower/encoder/blocks", True,
       r"^Config field 'model.init_from_map': image_tower/encoder/blocks is not a parameter "
       r"path in .*/1 \(paths are unrolled: block_N, layer_N\)$"),
  ]
  for spec, map_spec, scan, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      _load(spec, map_spec, scan)
    assert "\n" not in str(error.value)
  # Per-layer shapes: a wider model refuses each layer by its unrolled path.
  with pytest.raises(ValueError, match=r"image_tower/encoder/block_[01]/\S+ has shape") as error:
    abstract = _abstract(True)
    wide = {p: jax.ShapeDtypeStruct(x.shape[:-1] + (x.shape[-1] * 2,), x.dtype)
            if p[:3] == ENC + ("blocks",) else x for p, x in abstract.items()}
    init_from.load(unrolled, "image_tower:image_tower", flax.traverse_util.unflatten_dict(wide))
  assert "\n" not in str(error.value)


def test_summary_counts_arrays_and_values_per_subtree(runs):
  loaded = _load(runs["scanned"][0], "", scan=True)
  line = init_from.summary(loaded)
  counts = {}
  for path, value in loaded.items():
    arrays, values = counts.get(path[0], (0, 0))
    counts[path[0]] = (arrays + 1, values + value.size)
  assert line.startswith(f"image_tower: {counts['image_tower'][0]} arrays (")
  assert "log_logit_scale: 1 array (1 values)" in line
  assert "\n" not in line and line.count(":") == len(counts)
  assert init_from.summary({("a", "w"): np.zeros((1000, 1500))}) == "a: 1 array (1.5M values)"
