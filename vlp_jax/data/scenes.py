"""Procedural scenes of 1-3 flat shapes and their captions: data that needs no download.

Every attribute word in a caption is visible in the image, relations follow the drawn
positions, and shapes never overlap, so a model can learn the whole grammar from pixels.
"""
import functools
import io

import numpy as np
from PIL import Image

IMAGE_SIZE = 64
COLORS = {  # far apart in RGB and hue so they survive resizing and JPEG-like blur
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 20),
    "purple": (140, 40, 170),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 16, "large": 28}  # bounding-box side in pixels of the 64x64 image
COLOR_NAMES = tuple(COLORS)
SIZE_NAMES = tuple(SIZES)
SHAPE_COUNT_PROBS = (0.4, 0.35, 0.25)  # scenes with 1, 2, 3 shapes
GAP = 2  # minimum empty pixels between the boxes of two shapes


@functools.lru_cache(maxsize=None)
def _mask(shape, side):
  """Boolean [side, side] mask of `shape`, sampled at pixel centres."""
  c = (np.arange(side) + 0.5) / side * 2 - 1  # -1..1
  y, x = np.meshgrid(c, c, indexing="ij")
  if shape == "circle":
    return x * x + y * y <= 1.0
  if shape == "square":
    return np.ones((side, side), bool)
  if shape == "triangle":  # apex up, base at the bottom
    return (y >= -1) & (np.abs(x) <= (y + 1) / 2)
  if shape == "cross":
    return (np.abs(x) <= 0.3) | (np.abs(y) <= 0.3)
  raise ValueError(f"Unknown shape {shape!r}")


def _place(rng, sides):
  """Top-left corners for boxes of the given sides that keep GAP pixels apart, or None."""
  boxes = []
  for side in sides:
    for y, x in rng.integers(0, IMAGE_SIZE - side + 1, size=(100, 2)).tolist():
      box = (y, x, side)
      if all(_apart(box, other) for other in boxes):
        boxes.append(box)
        break
    else:
      return None
  return boxes


def _apart(a, b):
  (ay, ax, aside), (by, bx, bside) = a, b
  return (ax + aside + GAP <= bx or bx + bside + GAP <= ax or
          ay + aside + GAP <= by or by + bside + GAP <= ay)


def relation(a, b):
  """How box `a` lies relative to box `b`, on the axis along which they are separated."""
  (ay, ax, aside), (by, bx, bside) = a, b
  gaps = {
      "left of": bx - (ax + aside),
      "right of": ax - (bx + bside),
      "above": by - (ay + aside),
      "below": ay - (by + bside),
  }
  return max(gaps, key=gaps.get)


def phrase(size, color, shape):
  return f"a {size} {color} {shape}"


def make_scene(seed, index):
  """One scene from a fixed (seed, index): dict with the PNG, caption and labels; `objects`
  holds every shape's (size, colour, shape) names, in the order of `boxes`."""
  rng = np.random.default_rng([seed, index])
  count = int(rng.choice(3, p=SHAPE_COUNT_PROBS)) + 1
  while True:
    objects = [(int(rng.integers(len(SIZES))), int(rng.integers(len(COLORS))),
                int(rng.integers(len(SHAPES)))) for _ in range(count)]
    boxes = _place(rng, [SIZES[SIZE_NAMES[s]] for s, _, _ in objects])
    if boxes is not None:
      break
  background = int(rng.integers(200, 240))
  image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), background, np.uint8)
  for (size, color, shape), (y, x, side) in zip(objects, boxes):
    mask = _mask(SHAPES[shape], side)
    image[y:y + side, x:x + side][mask] = COLORS[COLOR_NAMES[color]]
  words = [phrase(SIZE_NAMES[s], COLOR_NAMES[c], SHAPES[k]) for s, c, k in objects]
  caption = words[0]
  for i in range(1, count):
    joiner = " " if i == 1 else ", which is "
    caption += joiner + relation(boxes[i - 1], boxes[i]) + " " + words[i]
  single = objects[0] if count == 1 else (-1, -1, -1)
  return dict(image=image, png=encode_png(image), caption=caption, num_shapes=count,
              size=single[0], color=single[1], shape=single[2], boxes=boxes,
              objects=[(SIZE_NAMES[s], COLOR_NAMES[c], SHAPES[k]) for s, c, k in objects])


def encode_png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def zeroshot_templates():
  """Prompt ensembles per attribute, built from the caption grammar's other attributes."""
  return {
      "color": [phrase(s, "{}", k) for s in SIZE_NAMES for k in SHAPES],
      "shape": [phrase(s, c, "{}") for s in SIZE_NAMES for c in COLOR_NAMES],
      "size": [phrase("{}", c, k) for c in COLOR_NAMES for k in SHAPES],
  }


CLASSNAMES = {"color": list(COLOR_NAMES), "shape": list(SHAPES), "size": list(SIZE_NAMES)}
