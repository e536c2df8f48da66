"""Weights in and out of the PyTorch world without torch: an open_clip checkpoint file
starts a run (model.init_from=open_clip:FILE, data.tokenizer=clip_bpe:FILE), the run is
exported in open_clip's format (export.format=open_clip), and vlp_jax.load reads that back
as the run itself."""
import gzip
import os

import flax
import jax
import numpy as np
import pytest

import main
import vlp_jax
from tests.helpers import tiny_config, write_scene_folder
from vlp_jax import families
from vlp_jax.models import export_open_clip
from vlp_jax.train import init_from, optimizer, state as state_lib

# A CLIP BPE vocabulary of open_clip's format: 512 byte pieces, 3 merges, start 515, end 516.
MERGES = ["h i</w>", "o g</w>", "d og</w>"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A random CLIP written as open_clip writes one, its BPE file and the run's config."""
  tmp = tmp_path_factory.mktemp("weights")
  merges = str(tmp / "bpe.txt.gz")
  with gzip.open(merges, "wt", encoding="utf-8") as f:
    f.write("\n".join(["#version: 0.2"] + MERGES))
  folder = write_scene_folder(tmp / "data", count=24)
  c = tiny_config(**{"model.vocab_size": 517, "model.activation": "quick_gelu",
                     "model.text_heads": 2, "data.train": f"jsonl:{folder}", "data.eval": "",
                     "data.shuffle_buffer": 32, "train.steps": 1})
  family = families.get_family(c, eos_id=516)
  abstract, _ = state_lib.abstract_state(family, optimizer.make(c)[0], 3, {"data": 1})
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.05, x.shape).astype(np.float32),
                        abstract.params)
  file = os.path.join(export_open_clip.write(tmp / "pre", params, c.model, eos_id=516),
                      export_open_clip.WEIGHTS_FILE)
  return dict(config=c, params=params, file=file, merges=merges, tmp=tmp, abstract=abstract)


def test_open_clip_in_train_export_open_clip_load(pretrained):
  c = pretrained["config"].copy_and_resolve_references()
  c.model.init_from = f"open_clip:{pretrained['file']}"
  loaded = init_from.load(c.model.init_from, "", pretrained["abstract"].params, c.model)
  want = flax.traverse_util.flatten_dict(pretrained["params"])
  assert loaded.keys() == want.keys()
  for path, value in want.items():
    np.testing.assert_array_equal(loaded[path], value, err_msg=str(path))

  workdir = str(pretrained["tmp"] / "run")
  with pytest.raises(ValueError, match="data.tokenizer.*clip_bpe:PATH"):
    main.run(c, "train", workdir)  # a whole imported model needs its own vocabulary
  c.data.tokenizer = f"clip_bpe:{pretrained['merges']}"
  main.run(c, "train", workdir)
  c.export.format = "open_clip"
  out = str(pretrained["tmp"] / "open_clip")
  assert main.run(c, "export", workdir, out=out)["format"] == "open_clip"
  assert sorted(os.listdir(out)) == [export_open_clip.CONFIG_FILE, export_open_clip.WEIGHTS_FILE,
                                    "tokenizer"]
  # The export reads back (heads from its open_clip_config.json, the tokenizer beside it)
  # as the run: the same embeddings of the same texts and images.
  run, back = vlp_jax.load(workdir), vlp_jax.load(f"open_clip:{out}")
  texts = ["hi dog", "dog hi hi", ""]
  images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), np.uint8)
  assert back.tokenizer.eos_id == 516
  np.testing.assert_array_equal(back.tokenizer.encode(texts), run.tokenizer.encode(texts))
  np.testing.assert_allclose(back.encode_texts(texts), run.encode_texts(texts), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(back.encode_images(images), run.encode_images(images), rtol=1e-5,
                             atol=1e-6)
