"""Two real processes (jax.distributed on localhost, 4 CPU devices each) read the global shuffle.

Each process builds the data x fsdp mesh, asks sharding.process_rows which rows of the
global batch it feeds, and runs TrainIterator on a jsonl folder with random crops. Placing
each process's keys and images at its rows must give exactly the batches of one process
feeding all rows (the pytest process, 8 devices): same records, same order, same crops.
Run as a script, this file is the worker: `python -m tests.test_multihost_data PORT ID OUT
FOLDER TOKENIZER`.
"""
import os
import sys

import numpy as np

from tests.test_multihost import _env, _free_port, _run_pair

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = 5


def _config(folder, tokenizer):
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  return tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4, "data.train": "jsonl:" + folder,
                        "data.tokenizer": tokenizer, "data.augment": "crop",
                        "data.crop_min_scale": 0.3})


def _read(config, process_index, process_count):
  """(rows, keys per batch, images per batch) of this process on the config's mesh."""
  from vlp_jax import data  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib, sharding  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh(config.mesh)
  rows = sharding.process_rows(sharding.batch_sharding(mesh), config.train.batch_size)
  tok = data.Tokenizer(config.data.tokenizer, config.model.context_length)
  it = data.TrainIterator(config, tok, process_index=process_index,
                          process_count=process_count, rows=rows)
  keys, images = [], []
  for _ in range(BATCHES):
    images.append(next(it)["image"])
    keys.append(it.keys)
  return rows, np.array(keys), np.array(images)


def worker(port, process_id, out, folder, tokenizer):
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
  assert (jax.process_count(), jax.device_count()) == (2, 8), jax.devices()
  rows, keys, images = _read(_config(folder, tokenizer), process_id, 2)
  np.savez(out, rows=rows, keys=keys, images=images)
  jax.distributed.shutdown()


def test_two_processes_assemble_the_one_process_batches(tmp_path):
  from tests.helpers import write_scene_folder  # pylint: disable=g-import-not-at-top
  from vlp_jax import data  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  folder = write_scene_folder(tmp_path / "scenes", count=48)  # 5 batches of 16 = 1.7 epochs
  tokenizer = str(tmp_path / "t.model")
  data.train_tokenizer(sources.get_source("jsonl:" + folder).captions(), 64, tokenizer)
  port = _free_port()
  outs = [str(tmp_path / f"host{i}.npz") for i in range(2)]
  results = _run_pair(lambda i: [sys.executable, "-m", "tests.test_multihost_data", str(port),
                                 str(i), outs[i], folder, tokenizer], lambda i: _env(),
                      timeout=150)
  for code, text in results:
    assert code == 0, text[-3000:]
  rows, keys, images = _read(_config(folder, tokenizer), 0, 1)
  np.testing.assert_array_equal(rows, np.arange(16))
  assembled_keys = np.empty_like(keys)
  assembled_images = np.zeros_like(images)
  hosts = [np.load(out) for out in outs]
  assert sorted(np.concatenate([h["rows"] for h in hosts]).tolist()) == list(range(16))
  for h in hosts:
    assembled_keys[:, h["rows"]] = h["keys"]
    assembled_images[:, h["rows"]] = h["images"]
  assert len(set(keys[:3].ravel())) == 48  # an epoch's records, each once
  np.testing.assert_array_equal(assembled_keys, keys)
  np.testing.assert_array_equal(assembled_images, images)  # crops seeded globally


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
