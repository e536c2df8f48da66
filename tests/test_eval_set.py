"""Eval images: CLIP's resize-and-centre-crop (or the square squash), kept as uint8."""
import io

import numpy as np
import pytest
from PIL import Image

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import jsonl_writer
from vlp_jax.data import preprocess

SIZE = 16


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory):
  """Non-square images: landscape 32 x 80, portrait 80 x 32, and one already 16 high."""
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, shape + (3,), dtype=np.uint8)
            for shape in ((32, 80), (80, 32), (16, 40))]
  folder = jsonl_writer.write_jsonl_folder(
      str(tmp_path_factory.mktemp("eval") / "wide"),
      [(f"{i}.png", _png(a), f"picture {i}") for i, a in enumerate(arrays)])
  tok = data.Tokenizer(data.train_tokenizer(["picture one two"], 32,
                                            str(tmp_path_factory.mktemp("tok") / "t.model")), 8)
  return folder, arrays, tok


def _load(eval_folder, resize):
  folder, _, tok = eval_folder
  c = config_lib.base_config()
  c.model.image_size, c.model.context_length, c.model.vocab_size = SIZE, 8, 32
  c.data.eval_resize = resize
  return data.load_eval_set("jsonl:" + folder, c, tok)


def _reference_crop(array):
  """Shorter side to 16 by averaging 2 x 2 blocks (bilinear at exactly half size), or kept
  when already 16; then the centre 16 x 16."""
  h, w, _ = array.shape
  f = min(h, w) // SIZE
  small = array.reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
  small = np.round(small).astype(np.uint8)
  top, left = (small.shape[0] - SIZE) // 2, (small.shape[1] - SIZE) // 2
  return small[top:top + SIZE, left:left + SIZE]


def test_crop_is_the_centre_crop_and_images_are_uint8(eval_folder):
  _, arrays, _ = eval_folder
  ev = _load(eval_folder, "crop")
  assert ev.images.dtype == np.uint8 and ev.images.shape == (3, SIZE, SIZE, 3)
  for got, array in zip(ev.images, arrays):
    diff = np.abs(got.astype(int) - _reference_crop(array).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float rounding at exact .5 only
  np.testing.assert_array_equal(ev.images[2], arrays[2][:, 12:28])


def test_squash_is_the_old_float_result_quantised(eval_folder):
  folder, arrays, _ = eval_folder
  ev = _load(eval_folder, "squash")
  assert ev.images.dtype == np.uint8
  for got, array in zip(ev.images, arrays):
    old = preprocess.preprocess(_png(array), SIZE).numpy()  # the float32 path eval used
    # Normalising the uint8 image on device: the old value within half a grey level.
    new = np.asarray(preprocess.normalize_on_device(got))
    assert np.abs(new - old).max() <= 0.5 / 255 / min(preprocess.CLIP_STD) + 1e-5
  # A squash is not a crop: the two protocols differ on non-square images.
  assert np.abs(ev.images.astype(int) - _load(eval_folder, "crop").images).mean() > 10


def test_unknown_eval_resize_names_the_field(eval_folder):
  with pytest.raises(ValueError, match="data.eval_resize"):
    _load(eval_folder, "stretch")
