"""The family contract (families/base.py): enforcement, frozen parameters, family state
through checkpoints and resumes, init_from, and what validation and evaluation read from it.

The test families compose CLIP's module (families/clip.py) on a one-device mesh.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from vlp_jax import config_lib, families
from vlp_jax.evaluate import runner
from vlp_jax.families import base
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import checkpoint, init_from, optimizer, state as state_lib
from vlp_jax.train.step import make_train_step


class FrozenImageClip(families.ClipFamily):
  """CLIP with its image tower frozen (as BLIP-2 freezes its image encoder)."""

  def frozen(self, params):
    return {k: jax.tree.map(lambda _, k=k: k == "image_tower", v) for k, v in params.items()}


class EmaQueueClip(families.ClipFamily):
  """CLIP with non-trainable state: an EMA of the parameters, a queue of the last image
  features (as ALBEF/BLIP keep momentum weights and feature queues) and a step count."""

  QUEUE = 24

  def init_state(self, params):
    queue = jnp.zeros((self.QUEUE, self.config.model.embed_dim), jnp.float32)
    return {"ema": params, "queue": nn.LogicallyPartitioned(queue, (None, "embed")),
            "count": jnp.zeros((), jnp.int32)}

  def update_state(self, state, params, features):
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state["ema"], params)
    queue = jnp.concatenate([features["img"], state["queue"]])[:self.QUEUE]
    return {"ema": ema, "queue": queue, "count": state["count"] + 1}


def _config(**overrides):
  return tiny_config(**{"mesh.data": 1, **overrides})


def _setup(family_cls, config):
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  family = family_cls(config, 1)
  tx, lr_fn = optimizer.make(config)
  return mesh, family, tx, lr_fn


def _steps(family, tx, lr_fn, config, mesh, state, shardings, seeds):
  step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  for seed in seeds:
    state, _ = step_fn(state, random_batch(config, seed=seed))
  return state


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, _numpy(a), _numpy(b))


# ---- enforcement ---------------------------------------------------------------------------

def test_a_family_missing_a_required_part_is_refused_naming_it():
  class NoLoss(base.Family):
    def example_batch(self, batch_size):
      return {}

    def host_batch(self, raw, tokenizer):
      return {}

    def init(self, rng, batch):
      return {}

    def features(self, params, batch, rng, state=None):
      return {}

  with pytest.raises(TypeError, match=r"^Family 'no_loss' is missing loss$"):
    base.register("no_loss")(NoLoss)
  assert "no_loss" not in families.FAMILIES

  class NoDecoder(families.ClipFamily):
    EVALUATIONS = frozenset({"retrieval", "caption"})

  with pytest.raises(TypeError, match="missing caption \\(needed by EVALUATIONS entry 'caption'\\)"):
    base.register("no_decoder")(NoDecoder)

  class Duck:  # the old duck-typed interface is not a family
    pass

  with pytest.raises(TypeError, match="missing the Family base class"):
    base.register("duck")(Duck)


def test_registry_is_what_validation_reads(monkeypatch):
  """model.name is checked against the registry; a family without exact accumulation
  refuses train.accum_steps > 1 naming the field."""
  with pytest.raises(ValueError, match="'model.name': 'nosuch' is not one of .*'coca'"):
    _config(**{"model.name": "nosuch"})

  class Inexact(families.ClipFamily):
    EXACT_ACCUMULATION = False

  monkeypatch.setitem(families.FAMILIES, "inexact", Inexact)
  _config(**{"model.name": "inexact"})
  with pytest.raises(ValueError, match="^Config field 'train.accum_steps': 2: family 'inexact'"):
    _config(**{"model.name": "inexact", "train.accum_steps": 2})
  assert not hasattr(config_lib, "MODEL_NAMES")


def test_evaluation_runs_only_what_the_family_declares():
  class Untouchable:
    def images(self, *args):
      raise AssertionError("encoded images for a family that declares no such evaluation")
    texts = images

  assert runner.evaluate(Untouchable(), None, None, [object()], frozenset({"probe"})) == {}


def test_the_train_iterator_builds_batches_with_the_family(tmp_path):
  """Whatever fields host_batch makes are the batch: no tokens hard-coded."""
  from tests.helpers import write_scene_folder  # pylint: disable=g-import-not-at-top
  from vlp_jax import data  # pylint: disable=g-import-not-at-top
  folder = write_scene_folder(tmp_path / "scenes", count=12)
  config = _config(**{"data.train": f"jsonl:{folder}", "train.batch_size": 4})
  tok = data.Tokenizer(data.train_tokenizer(["a red square", "a blue circle"] * 20, 32,
                                            str(tmp_path / "t.model")), 8)

  class Lengths(families.ClipFamily):
    def host_batch(self, raw, tokenizer):
      assert len(raw["key"]) == 4 and tokenizer is tok
      return {"image": raw["image"],
              "words": np.array([len(c.split()) for c in raw["caption"]], np.int32)}

  batch = next(data.TrainIterator(config, tok, family=Lengths(config, tok.eos_id)))
  assert sorted(batch) == ["image", "words"] and batch["image"].shape == (4, 16, 16, 3)
  assert (batch["words"] > 0).all()
  assert sorted(next(data.TrainIterator(config, tok))) == ["image", "tokens"]  # clip's


# ---- frozen parameters --------------------------------------------------------------------

def test_frozen_parameters_stay_bit_identical_and_have_no_optimizer_state():
  config = _config(**{"train.accum_steps": 2})  # the accumulating path (accum 1: below)
  mesh, family, tx, lr_fn = _setup(FrozenImageClip, config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  before = _numpy(state.params)
  state = _steps(family, tx, lr_fn, config, mesh, state, shardings, range(3))
  after = _numpy(state.params)
  _assert_equal(after["image_tower"], before["image_tower"])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                       after["text_tower"], before["text_tower"]))
  assert np.mean(moved) > 0.5  # the rest trains

  def nbytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  trainable = nbytes({k: v for k, v in after.items() if k != "image_tower"})
  # AdamW: mu and nu per trainable parameter, plus a few scalar counts.
  opt = nbytes(state.opt_state)
  assert 2 * trainable <= opt <= 2 * trainable + 64, (opt, trainable, nbytes(after))


# ---- family state -------------------------------------------------------------------------

def test_family_state_survives_a_checkpoint_and_a_resume_equals_a_straight_run(tmp_path):
  config = _config()
  mesh, family, tx, lr_fn = _setup(EmaQueueClip, config)
  abstract, _ = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  assert abstract.family_state["queue"].shape == (EmaQueueClip.QUEUE, 16)

  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  straight = _steps(family, tx, lr_fn, config, mesh, state, shardings, range(4))
  assert int(straight.family_state["count"]) == 4
  assert np.abs(np.asarray(straight.family_state["queue"])).sum() > 0

  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  first = _steps(family, tx, lr_fn, config, mesh, state, shardings, range(2))
  saved = _numpy(first)
  ckpt = checkpoint.Checkpointer(str(tmp_path), 2, 3)
  ckpt.save(2, first, 0)
  ckpt.wait()
  ckpt.close()
  del first  # the run is killed here

  # A fresh start of the same run: everything rebuilt, the state read back.
  mesh, family, tx, lr_fn = _setup(EmaQueueClip, config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  shardings = sharding.named(mesh, specs)
  restored, _ = checkpoint.Checkpointer(str(tmp_path), 2, 3).restore(abstract, shardings)
  _assert_equal(restored.family_state, saved.family_state)
  _assert_equal(restored, saved)
  resumed = _steps(family, tx, lr_fn, config, mesh, restored, shardings, range(2, 4))
  _assert_equal(resumed.family_state, straight.family_state)
  _assert_equal(resumed.params, straight.params)


# ---- init_from ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
  """A CLIP checkpoint at step 1 (seed 7), as another run leaves it."""
  workdir = str(tmp_path_factory.mktemp("other_run"))
  config = _config(seed=7)
  mesh, family, tx, lr_fn = _setup(families.ClipFamily, config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  state = _steps(family, tx, lr_fn, config, mesh, state, shardings, [0])
  ckpt = checkpoint.Checkpointer(workdir, 1, 3)
  ckpt.save(1, state, 0)
  ckpt.wait()
  ckpt.close()
  return workdir, _numpy(state.params)


def _start(config, loaded):
  mesh, family, tx, _ = _setup(families.ClipFamily, config)
  state, _ = state_lib.create(family, tx, config.seed, mesh, loaded)
  return _numpy(state.params)


def _load(config):
  mesh, family, tx, _ = _setup(families.ClipFamily, config)
  abstract, _ = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  return init_from.load(config.model.init_from, config.model.init_from_map, abstract.params)


def test_init_from_loads_the_named_parts_of_another_run(other_run):
  workdir, theirs = other_run
  config = _config(**{"model.init_from": f"{workdir}:1",
                      "model.init_from_map": "image_tower:image_tower"})
  loaded = _load(config)
  assert all(path[0] == "image_tower" for path in loaded)
  ours = _start(config, loaded)
  fresh = _start(_config(), None)
  _assert_equal(ours["image_tower"], theirs["image_tower"])
  _assert_equal(ours["text_tower"], fresh["text_tower"])
  assert not np.array_equal(ours["text_tower"]["proj"]["kernel"],
                            theirs["text_tower"]["proj"]["kernel"])
  # Empty map: every parameter whose path and shape match, i.e. all of them here.
  everything = _start(config, _load(_config(**{"model.init_from": workdir})))
  _assert_equal(everything, theirs)


def test_init_from_errors_are_one_line_naming_the_path(other_run, tmp_path):
  workdir, _ = other_run
  cases = [
      ({"model.init_from_map": "image_tower:nosuch_tower"},
       r"^Config field 'model.init_from_map': nosuch_tower is not a parameter path in .*/1$"),
      ({"model.init_from_map": "vision:image_tower"},
       r"^Config field 'model.init_from_map': vision/.* \(from image_tower/.*\) is not a "
       r"parameter path of this model$"),
      ({"model.vision_width": 64, "model.init_from_map": "image_tower:image_tower"},
       r"^Config field 'model.init_from_map': image_tower/.* has shape \(.*\) in this model "
       r"and \(.*\) at image_tower/"),
      ({"model.init_from": f"{workdir}:5"},
       r"^Config field 'model.init_from': no checkpoint at step 5 in .*; available steps: 1$"),
      ({"model.init_from": str(tmp_path / "nothing")},
       r"^Config field 'model.init_from': no checkpoints in "),
  ]
  for overrides, message in cases:
    config = _config(**{"model.init_from": workdir, **overrides})
    with pytest.raises(ValueError, match=message) as error:
      _load(config)
    assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="'model.init_from_map': is set but model.init_from"):
    _config(**{"model.init_from_map": "image_tower:image_tower"})


def test_the_shipped_families_are_registered_and_complete():
  assert {"clip", "siglip", "coca"} <= set(families.FAMILIES)
  for name, cls in families.FAMILIES.items():
    assert base.missing_parts(cls) == [], name
  assert families.FAMILIES["siglip"].CONTRASTIVE_KIND == "sigmoid"
  assert "caption" in families.FAMILIES["coca"].EVALUATIONS
  assert "caption" not in families.FAMILIES["clip"].EVALUATIONS


def test_a_non_finite_step_keeps_the_family_state():
  from vlp_jax.train.step import guarded_update  # pylint: disable=g-import-not-at-top
  zero = jnp.zeros((), jnp.int32)
  state = state_lib.TrainState(step=zero, params={"w": jnp.ones(2)}, opt_state=(), rng=zero,
                               skipped_nonfinite=zero, nonfinite_streak=zero,
                               nonfinite_step=zero, family_state={"queue": jnp.ones(3)})
  new = {"queue": jnp.full(3, 2.0)}
  kept = guarded_update(state, {"w": jnp.zeros(2)}, (), jnp.asarray(False), False, new)
  np.testing.assert_array_equal(kept.family_state["queue"], np.ones(3))
  taken = guarded_update(state, {"w": jnp.zeros(2)}, (), jnp.asarray(True), False, new)
  np.testing.assert_array_equal(taken.family_state["queue"], np.full(3, 2.0))


def test_a_family_without_a_tokenizer_cannot_declare_text_evaluations():
  from vlp_jax.families import base  # pylint: disable=g-import-not-at-top
  from vlp_jax.families.clip import ClipFamily  # pylint: disable=g-import-not-at-top

  class NoText(ClipFamily):
    USES_TOKENIZER = False
  with pytest.raises(TypeError, match="USES_TOKENIZER.*retrieval"):
    base.check(NoText, "no_text")
