"""Checkpoints never lose a model nor silently turn it into another one.

The Checkpointer is driven directly with a small state: saves only on the interval (and
when forced), positions gathered across hosts only then, the config fingerprint checked
on restore, damaged checkpoints skipped for the newest intact one.
"""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from vlp_jax.train import checkpoint
from vlp_jax.train.fingerprint import fingerprint


def small_state(value=0.0):
  return {"params": {"text_tower": {"proj": jnp.full((4, 3), value, jnp.float32)},
                     "scale": jnp.asarray(value, jnp.float32)},
          "step": jnp.asarray(int(value), jnp.int32)}


def restore(ckpt, state=None, step=None):
  state = small_state() if state is None else state
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return ckpt.restore(abstract, jax.tree.map(lambda x: x.sharding, state), step)


def write(workdir, steps, every=1, **kwargs):
  """Checkpoints at `steps`, state value = step, input position = 10 * step."""
  ckpt = checkpoint.Checkpointer(str(workdir), every, 10, **kwargs)
  for step in steps:
    assert ckpt.save(step, small_state(step), lambda s=step: 10 * s)
  ckpt.wait()
  ckpt.close()
  return os.path.join(str(workdir), "checkpoints")


def step_files(directory, step, item="state"):
  root = os.path.join(directory, str(step), item)
  return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def test_positions_are_gathered_only_on_saved_steps(tmp_path, monkeypatch):
  gathers, asked = [], []
  real = checkpoint.multihost_utils.process_allgather

  def counting(x, *args, **kwargs):
    gathers.append(int(np.asarray(x).reshape(-1)[0]))
    return real(x, *args, **kwargs)

  monkeypatch.setattr(checkpoint.multihost_utils, "process_allgather", counting)
  ckpt = checkpoint.Checkpointer(str(tmp_path), 5, 3)
  position_fn = lambda: asked.append(1) or 16 * step  # pylint: disable=unnecessary-lambda
  saved = []
  for step in range(1, 11):  # the loop: save every step, then the forced final save
    if ckpt.save(step, small_state(step), position_fn):
      saved.append(step)
  assert not ckpt.save(10, small_state(10), position_fn, force=True)
  ckpt.wait()
  assert saved == [5, 10] and ckpt.manager.all_steps() == [5, 10]
  assert gathers == [80, 160] and len(asked) == 2
  ckpt.close()


def test_no_save_off_the_interval_and_the_newest_is_always_kept(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "a"), 3, 2)
  assert [s for s in range(1, 5) if ckpt.save(s, small_state(s), lambda: 0)] == [3]
  assert ckpt.save(4, small_state(4), lambda: 0, force=True)
  ckpt.wait()
  assert ckpt.manager.all_steps() == [3, 4]
  ckpt.close()
  # keep=0 and every=0 (the config forbids both): only forced saves, and one is kept.
  ckpt = checkpoint.Checkpointer(str(tmp_path / "b"), 0, 0)
  assert not any(ckpt.save(s, small_state(s), lambda: 0) for s in range(1, 4))
  assert ckpt.save(3, small_state(3), lambda: 0, force=True)
  ckpt.wait()
  assert ckpt.manager.all_steps() == [3]
  ckpt.close()


def test_another_model_config_is_refused_naming_the_fields(tmp_path, caplog):
  directory = write(tmp_path, [30], fingerprint=fingerprint(tiny_config()))
  changed = tiny_config(**{"model.text_causal": False, "model.activation": "quick_gelu",
                           "model.text_pool": "last", "model.remat": True})
  with pytest.raises(ValueError) as error:
    restore(checkpoint.Checkpointer(str(tmp_path), 1, 3, fingerprint=fingerprint(changed)))
  message = str(error.value)
  assert "\n" not in message
  assert message == (
      f"Checkpoint {directory}/30 was trained with model.activation=gelu, "
      f"model.text_causal=True, model.text_pool=eos; this config has "
      f"model.activation=quick_gelu, model.text_causal=False, model.text_pool=last "
      f"(pass --allow_config_change if this is deliberate)")
  with caplog.at_level(logging.WARNING):
    state, position = restore(checkpoint.Checkpointer(
        str(tmp_path), 1, 3, fingerprint=fingerprint(changed), allow_config_change=True))
  assert position == 300 and int(state["step"]) == 30
  assert any("model.text_causal=False" in r.getMessage() for r in caplog.records)
  # Fields that only change speed or memory, or the schedule, are not part of it.
  fast = tiny_config(**{"model.remat": True, "model.dtype": "bfloat16", "train.steps": 7,
                        "model.init_from": "/runs/a;/runs/b"})  # initialisation only
  assert {"model.scan", "train.batch_size", "seed", "data.train"} <= set(fingerprint(fast))
  assert restore(checkpoint.Checkpointer(str(tmp_path), 1, 3, fingerprint=fingerprint(fast)))


def test_a_width_change_names_the_parameter_and_both_shapes(tmp_path):
  from vlp_jax import families  # pylint: disable=import-outside-toplevel
  from vlp_jax.parallel import mesh as mesh_lib, sharding  # pylint: disable=import-outside-toplevel
  from vlp_jax.train import optimizer, state as state_lib  # pylint: disable=import-outside-toplevel

  def build(config):
    mesh = mesh_lib.make_mesh(config.mesh)
    tx, _ = optimizer.make(config)
    abstract, specs = state_lib.abstract_state(families.get_family(config, 1), tx, config.seed,
                                               mesh.shape)
    return abstract, sharding.named(mesh, specs)

  narrow = tiny_config()
  abstract, shardings = build(narrow)
  # Random values in the real state's tree (no init compiled): the layout is what matters.
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda a, s: jax.device_put(rng.normal(size=a.shape).astype(a.dtype), s),
                       abstract, shardings)
  ckpt = checkpoint.Checkpointer(str(tmp_path), 1, 3, fingerprint=fingerprint(narrow))
  ckpt.save(1, state, lambda: 0)
  ckpt.wait()
  restored, _ = ckpt.restore(abstract, shardings)  # the same model restores
  np.testing.assert_array_equal(restored.params["text_tower"]["proj"]["kernel"],
                                state.params["text_tower"]["proj"]["kernel"])
  wide = tiny_config(**{"model.text_width": 48})
  abstract, shardings = build(wide)
  with pytest.raises(ValueError, match=r"model.text_width=32; this config has "
                                       r"model.text_width=48 \(pass --allow_config_change"):
    checkpoint.Checkpointer(str(tmp_path), 1, 3, fingerprint=fingerprint(wide)).restore(
        abstract, shardings)
  allowed = checkpoint.Checkpointer(str(tmp_path), 1, 3, fingerprint=fingerprint(wide),
                                    allow_config_change=True)
  with pytest.raises(ValueError) as error:
    allowed.restore(abstract, shardings)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"Checkpoint {ckpt.directory}/1 does not fit this model: params/")
  assert "has shape (32" in message and "in the checkpoint and (48" in message


def test_a_truncated_array_file_falls_back_to_the_previous_step(tmp_path, caplog):
  directory = write(tmp_path, [1, 2])
  # tensorstore's data files (d/<hash>), each cut in half as by a full disk or a kill.
  arrays = [p for p in step_files(directory, 2) if os.path.basename(os.path.dirname(p)) == "d"]
  sizes = {p: os.path.getsize(p) for p in arrays}
  for path, size in sizes.items():
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  ckpt = checkpoint.Checkpointer(str(tmp_path), 1, 10)
  with caplog.at_level(logging.WARNING):
    state, position = restore(ckpt)
  assert int(state["step"]) == 1 and position == 10
  assert any(f"{directory}/2 is damaged" in r.getMessage() for r in caplog.records)
  # Moved aside, not deleted, and no longer in the way of the step's next save.
  assert sorted(os.listdir(directory)) == ["1", "2.damaged"]
  assert all(os.path.getsize(p.replace("/2/", "/2.damaged/")) == n // 2 for p, n in sizes.items())
  assert ckpt.latest_step() == 1
  assert ckpt.save(2, small_state(2), lambda: 20)
  ckpt.wait()
  state, position = restore(ckpt)
  assert int(state["step"]) == 2 and position == 20
  ckpt.close()


def test_missing_metadata_falls_back_to_the_previous_step(tmp_path, caplog):
  directory = write(tmp_path, [3, 6, 9], every=3)
  os.remove(os.path.join(directory, "9", "state", "_METADATA"))
  with caplog.at_level(logging.WARNING):
    state, position = restore(checkpoint.Checkpointer(str(tmp_path), 3, 10))
  assert int(state["step"]) == 6 and position == 60
  assert any(f"{directory}/9 is damaged" in r.getMessage() for r in caplog.records)


def test_a_named_damaged_or_missing_step_is_one_line(tmp_path):
  directory = write(tmp_path, [1, 2])
  for path in step_files(directory, 2):
    with open(path, "r+b") as f:
      f.truncate(3)
  reader = checkpoint.Checkpointer(str(tmp_path), 1, 10, read_only=True)
  with pytest.raises(ValueError) as error:
    restore(reader, step=2)
  message = str(error.value)
  assert "\n" not in message and len(message) < 500
  assert message.startswith(f"Checkpoint {directory}/2 is damaged (")
  assert message.endswith("available steps: 1, 2")
  with pytest.raises(ValueError, match=f"^No checkpoint at step 7 in {directory}; "
                                       "available steps: 1, 2$"):
    restore(reader, step=7)
  assert int(restore(reader, step=1)[0]["step"]) == 1
  assert sorted(os.listdir(directory)) == ["1", "2"]  # read-only: nothing moved


def test_no_intact_checkpoint_is_one_line_and_moves_nothing(tmp_path):
  directory = write(tmp_path, [4])
  os.remove(os.path.join(directory, "4", "state", "_METADATA"))
  with pytest.raises(ValueError) as error:  # not a silent start from scratch
    restore(checkpoint.Checkpointer(str(tmp_path), 1, 10))
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"No checkpoint in {directory} can be restored: {directory}/4: ")
  assert os.listdir(directory) == ["4"]


def test_an_interrupted_save_is_cleaned_up_on_start(tmp_path):
  directory = write(tmp_path, [1])
  orphan = os.path.join(directory, "2.orbax-checkpoint-tmp-1700000000")
  os.makedirs(os.path.join(orphan, "state"))
  with open(os.path.join(orphan, "state", "x"), "w") as f:
    f.write("partial")
  checkpoint.Checkpointer(str(tmp_path), 1, 10, read_only=True).close()
  assert os.path.isdir(orphan)  # read-only runs remove nothing
  ckpt = checkpoint.Checkpointer(str(tmp_path), 1, 10)
  assert sorted(os.listdir(directory)) == ["1"]
  assert int(restore(ckpt)[0]["step"]) == 1
  ckpt.close()


def snapshot(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, dirs, files in os.walk(root) for f in files + dirs}


def test_read_only_creates_moves_and_removes_nothing(tmp_path):
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  ckpt = checkpoint.Checkpointer(str(fresh), 1, 3, fingerprint=fingerprint(tiny_config()),
                                 read_only=True)
  assert ckpt.latest_step() is None and restore(ckpt) is None
  ckpt.wait()
  ckpt.close()
  assert not os.listdir(fresh)
  # A trained run with a damaged newest step and an interrupted save: read, not repaired.
  directory = write(tmp_path / "run", [1, 2], fingerprint=fingerprint(tiny_config()))
  os.remove(os.path.join(directory, "2", "state", "_METADATA"))
  os.makedirs(os.path.join(directory, "3.orbax-checkpoint-tmp-1700000000", "state"))
  before = snapshot(tmp_path / "run")
  ckpt = checkpoint.Checkpointer(str(tmp_path / "run"), 1, 3,
                                 fingerprint=fingerprint(tiny_config()), read_only=True)
  assert int(restore(ckpt)[0]["step"]) == 1
  ckpt.wait()
  ckpt.close()
  assert snapshot(tmp_path / "run") == before
