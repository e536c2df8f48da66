"""CoCa through the real entry point: train, caption a data spec and a folder of images
from the checkpoint."""
import json
import os

import numpy as np

import main
from tests.helpers import tiny_config, write_scene_folder


def test_train_then_caption(tmp_path):
  folder = write_scene_folder(tmp_path / "data", count=40)
  c = tiny_config(**{"model.name": "coca", "model.num_decoder_queries": 4,
                     "model.multimodal_depth": 1, "model.context_length": 24,
                     "data.train": f"jsonl:{folder}", "data.eval": f"jsonl:{folder}",
                     "train.steps": 2, "train.batch_size": 8, "data.shuffle_buffer": 64,
                     "eval.batch_size": 16, "decode.beam_size": 2, "decode.show": 2})
  workdir = str(tmp_path / "work")
  trained = main.run(c, "train", workdir)
  assert np.isfinite(trained["caption_loss"]) and np.isfinite(trained["contrastive_loss"])
  np.testing.assert_allclose(trained["loss"],
                             trained["contrastive_loss"] + 2 * trained["caption_loss"], rtol=1e-5)
  # Training a captioning family ends with caption metrics beside retrieval.
  assert {"caption/data/bleu4", "caption/data/cider", "retrieval/data/t2i_r10"} <= set(trained)

  result = main.run(c, "caption", workdir, caption_data=f"jsonl:{folder}")
  assert result["step"] == 2 and result["caption/data/examples"] == 40
  assert set(result) == {"step", "caption/data/examples", "caption/data/mean_words",
                         "caption/data/bleu4", "caption/data/cider",
                         "caption/data/cider_random_caption"}
  assert 0 <= result["caption/data/bleu4"] <= 1 and result["caption/data/cider"] >= 0
  with open(os.path.join(workdir, "captions", "data_step2.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 40 and all(len(r["references"]) == 1 for r in rows)
  assert all(isinstance(r["caption"], str) for r in rows)

  images = os.path.join(folder, "images")
  with open(os.path.join(images, "zz_corrupt.png"), "wb") as f:
    f.write(b"not an image")  # skipped (a masked position), not fatal
  result = main.run(c, "caption", workdir, caption_data=images)
  assert result["caption/images/examples"] == 40
  json.dumps(result)
