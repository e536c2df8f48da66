"""Image decoding and preprocessing in TF: one code path for training and evaluation.

Speed matters here (a ViT-B/16 host needs ~2,500 images/s): a random crop of a JPEG decodes
only the crop window (decode_and_crop_jpeg: the pixels of decoding then cropping, except
chroma upsampling along the window's edge, ~0.1% of pixels), and
the antialiasing filter, costly at 224px, runs only where the downscale exceeds 2x (below
that, bilinear sampling already averages every source pixel).
"""
import numpy as np

from vlp_jax.data.tf_setup import tf

# OpenAI CLIP's normalisation, so pretrained towers and ours see the same input statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ASPECT_RANGE = (3 / 4, 4 / 3)
ANTIALIAS_ABOVE = 2.0  # downscale factor above which resizing antialiases
EVAL_RESIZE = ("crop", "squash")  # config.data.eval_resize


def decode(image_bytes):
  """uint8 [h, w, 3] from JPEG/PNG/GIF (first frame)/BMP/WEBP bytes."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _is_jpeg(image_bytes):
  return tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"


def _shape(image_bytes):
  """[h, w, 3] from the header for JPEG (no decoding), else by decoding."""
  return tf.cond(_is_jpeg(image_bytes),
                 lambda: tf.concat([tf.image.extract_jpeg_shape(image_bytes)[:2], [3]], 0),
                 lambda: tf.shape(decode(image_bytes)))


def crop_box(shape, min_scale, seed):
  """(begin, size) of a crop covering min_scale..1 of the area, from a stateless `seed`."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ASPECT_RANGE,
      area_range=(min_scale, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin, size


def random_crop_box(image, min_scale, seed):
  """A random crop of a decoded image (see crop_box)."""
  begin, size = crop_box(tf.shape(image), min_scale, seed)
  return tf.slice(image, begin, size)


def decode_random_crop(image_bytes, min_scale, seed):
  """The crop of `random_crop_box`, decoding only its window when the image is a JPEG."""
  begin, size = crop_box(_shape(image_bytes), min_scale, seed)

  def jpeg():
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  image = tf.cond(_is_jpeg(image_bytes), jpeg, lambda: tf.slice(decode(image_bytes), begin, size))
  image.set_shape([None, None, 3])
  return image


def resize(image, size):
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = tf.reduce_max(shape) / size
  return tf.cond(factor > ANTIALIAS_ABOVE,
                 lambda: tf.image.resize(image, [size, size], antialias=True),
                 lambda: tf.image.resize(image, [size, size]))


def resize_crop(image, size):
  """CLIP's evaluation protocol: the shorter side resized to `size` (the longer one as
  torchvision's Resize, truncated), then the centre `size` x `size` crop. Aspect ratios are
  kept, so zero-shot figures compare with published ones."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = tf.reduce_min(shape) / size
  new = tf.maximum(tf.cast(shape / factor, tf.int32), size)
  image = tf.cond(factor > ANTIALIAS_ABOVE,
                  lambda: tf.image.resize(image, new, antialias=True),
                  lambda: tf.image.resize(image, new))
  top, left = (new[0] - size) // 2, (new[1] - size) // 2
  return tf.slice(image, tf.stack([top, left, 0]), [size, size, 3])


def eval_image(image_bytes, size, resize_mode="crop"):
  """uint8 [size, size, 3] for evaluation: a quarter of float32's host memory; normalised
  on device (normalize_on_device). resize_mode: crop (CLIP) or squash (aspect ignored)."""
  return eval_array(decode(image_bytes), size, resize_mode)


def eval_array(image, size, resize_mode="crop"):
  """`eval_image` of a decoded image [H, W, 3] (the Python API's arrays)."""
  image = tf.convert_to_tensor(image)
  if resize_mode == "crop":
    image = resize_crop(image, size)
  elif resize_mode == "squash":
    image = resize(image, size)
  else:
    raise ValueError(f"Config field 'data.eval_resize': {resize_mode!r} is not one of "
                     f"{EVAL_RESIZE}")
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _scale_offset():
  scale = np.array([1 / (255 * s) for s in CLIP_STD], np.float32)
  offset = np.array([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)], np.float32)
  return scale, offset


def normalize(image):
  """(x / 255 - mean) / std as one multiply-add."""
  scale, offset = _scale_offset()
  return tf.cast(image, tf.float32) * scale + offset


def normalize_on_device(images):
  """`normalize` of uint8 images inside a jitted function (jax arrays or tracers)."""
  scale, offset = _scale_offset()
  return images.astype(np.float32) * scale + offset


def preprocess(image_bytes, size, augment="none", min_scale=1.0, seed=None):
  """float32 [size, size, 3]: decoded, optionally randomly cropped, resized, normalised.

  No flips: captions say left and right.
  """
  if augment == "crop":
    image = decode_random_crop(image_bytes, min_scale, seed)
  elif augment == "none":
    image = decode(image_bytes)
  else:
    raise ValueError(f"Unknown config.data.augment {augment!r}; known: none, crop")
  return normalize(resize(image, size))
