"""Evaluation as two real processes (4 CPU devices each) == evaluation in one with 8.

Each process decodes only the eval positions its devices hold; the metrics, embeddings and
skip counts must equal the one-process ones, also on a mesh whose device order gives each
process interleaved rows of every batch (as TPU meshes may). Run as a script, this file is
the worker: `python -m tests.test_multihost_eval PORT ID DATA OUT`.
"""
import io
import json
import os
import sys

import numpy as np

from tests.test_multihost import _env, _free_port, _run_pair

MESH = {"mesh.data": 2, "mesh.fsdp": 4, "eval.batch_size": 16}
COLORS = ("red", "green", "blue")
GARBLED_JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"  # fails decoding


def _png(index, shape=(24, 40)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(index)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def write_data(folder):
  """A labelled jsonl folder (21 records, a non-image and an undecodable JPEG among them)
  and a tokenizer model; returns the tokenizer path."""
  from vlp_jax import data  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import jsonl_writer  # pylint: disable=g-import-not-at-top
  examples = [(f"{i}.png", _png(i), f"{COLORS[i % 3]} thing {i % 7}") for i in range(21)]
  examples[4] = ("bad.png", b"not an image at all", "red thing")
  examples[17] = ("garbled.jpg", GARBLED_JPEG, "blue thing")
  jsonl_writer.write_jsonl_folder(os.path.join(folder, "labelled"), examples)
  path = os.path.join(folder, "labelled", "captions.jsonl")
  lines = [json.loads(line) for line in open(path)]
  with open(path, "w") as f:
    for i, line in enumerate(lines):
      f.write(json.dumps(dict(line, label=COLORS[i % 3])) + "\n")
  words = [f"{c} thing {i} photo of a" for c in COLORS for i in range(7)]
  return data.train_tokenizer(words, 64, os.path.join(folder, "tok.model"))


class Captioned:
  """19 in-memory records with 1-3 captions each (as tfds coco_captions gives them), one
  not an image and one undecodable."""

  name = "captioned"
  classify = False
  num_records = 19

  def __init__(self):
    from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
    self.zeroshot_tasks = {"label": sources.ZeroShotTask(list(COLORS), ["a {} photo"])}

  def records(self, index=0, count=1):
    from vlp_jax.data.tf_setup import tf  # pylint: disable=g-import-not-at-top
    n = self.num_records
    images = [_png(100 + i, (40, 24)) for i in range(n)]
    images[2], images[11] = b"plain text, not an image", GARBLED_JPEG
    captions = [[f"{COLORS[i % 3]} thing {j + i % 5}" if j <= i % 3 else "" for j in range(3)]
                for i in range(n)]
    ds = tf.data.Dataset.from_tensor_slices(dict(
        key=[f"k{i}" for i in range(n)], image=images, path=[""] * n, missing=[False] * n,
        captions=captions, label_label=np.array([i % 3 for i in range(n)], np.int32)))
    return ds.shard(count, index)


def init_params(tok_path):
  """The tiny CLIP's parameters from the config's seed, as numpy (the same on every process)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from vlp_jax import data, families  # pylint: disable=g-import-not-at-top
  config = tiny_config(**MESH)
  family = families.get_family(config, data.Tokenizer(tok_path, 8).eos_id)
  batch = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), family.example_batch(1))
  params = jax.jit(lambda: nn.meta.unbox(family.init(jax.random.PRNGKey(config.seed), batch)))()
  return jax.tree.map(np.asarray, params)


def evaluate(folder, tok_path, params, devices):
  """Metrics, image embeddings and skip counts of both sets on a data=2 x fsdp=4 mesh of
  `devices` (in that order)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from vlp_jax import data, families  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import eval_set  # pylint: disable=g-import-not-at-top
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib, sharding  # pylint: disable=g-import-not-at-top
  config = tiny_config(**MESH)
  tok = data.Tokenizer(tok_path, config.model.context_length)
  mesh = mesh_lib.make_mesh(config.mesh, devices=devices)
  family = families.get_family(config, tok.eos_id)
  params = jax.device_put(params, sharding.replicated(mesh))
  encoder = runner.Encoder(family, mesh, config.eval.batch_size)
  sets = [data.load_eval_set("jsonl:" + os.path.join(folder, "labelled"), config, tok,
                             mesh=mesh),
          eval_set.from_source(Captioned(), config, tok, encoder.layout)]
  out = {"metrics": runner.evaluate(encoder, params, tok, sets),
         "skipped": [ev.skipped for ev in sets], "rows": encoder.layout.rows.tolist(),
         "local_images": [len(ev.images) for ev in sets]}
  embeddings = [encoder.images(params, ev) for ev in sets]
  return out, embeddings


def worker(port, process_id, folder, out):
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  # Device order p0 p1 p0 p1 ...: each process holds rows {0, 1, 4, 5, ...} of a batch.
  interleaved = [d for pair in zip(devices[:4], devices[4:]) for d in pair]
  results = {}
  tok_path = os.path.join(folder, "tok.model")
  params = init_params(tok_path)
  for name, order in (("plain", devices), ("interleaved", interleaved)):
    info, embeddings = evaluate(folder, tok_path, params, order)
    results[name] = info
    np.savez(f"{out}.{name}.{process_id}.npz", *embeddings)
  with open(f"{out}.{process_id}.json", "w") as f:
    json.dump(results, f)
  jax.distributed.shutdown()


def test_two_process_evaluation_equals_one_process(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path)
  tok_path = write_data(folder)
  port, out = _free_port(), str(tmp_path / "out")
  results = _run_pair(lambda i: [sys.executable, "-m", "tests.test_multihost_eval", str(port),
                                 str(i), folder, out], lambda i: _env(), timeout=300)
  for code, text in results:
    assert code == 0, text[-3000:]
  one, one_embeddings = evaluate(folder, tok_path, init_params(tok_path), jax.devices())
  assert one["skipped"][0]["not_an_image"] == 1 and one["skipped"][0]["decode_error"] == 1
  assert one["skipped"][1]["not_an_image"] == 1 and one["skipped"][1]["decode_error"] == 1
  assert {"retrieval/labelled/t2i_r1", "zeroshot/labelled_label/top1",
          "retrieval/captioned/i2t_r5", "zeroshot/captioned_label/top1"} <= set(one["metrics"])
  local = {"plain": 0, "interleaved": 0}
  for process_id in range(2):
    with open(f"{out}.{process_id}.json") as f:
      two = json.load(f)
    assert two["interleaved"]["rows"] == [[0, 1, 4, 5, 8, 9, 12, 13],
                                          [2, 3, 6, 7, 10, 11, 14, 15]][process_id]
    for name in ("plain", "interleaved"):
      assert two[name]["metrics"] == one["metrics"], name
      assert two[name]["skipped"] == one["skipped"], name
      local[name] += np.array(two[name]["local_images"])
      embeddings = np.load(f"{out}.{name}.{process_id}.npz")
      for i, expected in enumerate(one_embeddings):
        np.testing.assert_allclose(embeddings[f"arr_{i}"], expected, atol=1e-5, err_msg=name)
  for name, counts in local.items():  # each usable image decoded by exactly one process
    np.testing.assert_array_equal(counts, [19, 17], err_msg=name)


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
