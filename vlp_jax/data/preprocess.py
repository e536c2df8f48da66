"""Image decoding and preprocessing in TF: one code path for training and evaluation."""
from vlp_jax.data.tf_setup import tf

# OpenAI CLIP's normalisation, so pretrained towers and ours see the same input statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ASPECT_RANGE = (3 / 4, 4 / 3)


def decode(image_bytes):
  """uint8 [h, w, 3] from JPEG/PNG/GIF (first frame)/BMP/WEBP bytes."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def random_crop_box(image, min_scale, seed):
  """A crop covering min_scale..1 of the area, drawn from a stateless `seed` ([2] int)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ASPECT_RANGE,
      area_range=(min_scale, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
  return tf.slice(image, begin, size)


def normalize(image):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(CLIP_MEAN)) / tf.constant(CLIP_STD)


def preprocess(image_bytes, size, augment="none", min_scale=1.0, seed=None):
  """float32 [size, size, 3]: decoded, optionally randomly cropped, resized, normalised.

  No flips: captions say left and right.
  """
  image = decode(image_bytes)
  if augment == "crop":
    image = random_crop_box(image, min_scale, seed)
  elif augment != "none":
    raise ValueError(f"Unknown config.data.augment {augment!r}; known: none, crop")
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  return normalize(image)
