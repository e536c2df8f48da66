"""The tiny CLIP and CoCa of the performance comparison, built the same in vlp_jax and
open_clip (bench/compare_open_clip.py, bench/step_profile.py): sizes, batches, FLOPs."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPEC = dict(image_size=64, patch_size=8, width=256, depth=6, heads=4, context=32, vocab=32000,
            embed_dim=256, decoder_depth=3)
EOT = SPEC["vocab"] - 1  # the largest id, as in OpenAI's tokenizer: open_clip pools at argmax
SOT = SPEC["vocab"] - 2
LR, WEIGHT_DECAY = 5e-4, 0.2  # open_clip's training defaults for ViT CLIPs (AdamW)
# How vlp_jax runs the spec: layers under scan, each block rematerialised keeping its weight
# matmuls (models/layers.py REMAT_POLICIES). On this CPU that is both faster and about half
# the memory of an unrolled stack that keeps everything; `--set model.scan=False` to compare.
VLP_OPTIONS = {"model.scan": True, "model.remat": True, "model.remat_policy": "dots"}


def make_batch(batch_size, seed=0):
  """Images NHWC float32 and captions [SOT, pieces, EOT, 0...] of 32 tokens."""
  import numpy as np
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch_size, SPEC["image_size"], SPEC["image_size"], 3),
                               dtype=np.float32)
  text = np.zeros((batch_size, SPEC["context"]), np.int32)
  for i, n in enumerate(rng.integers(5, SPEC["context"] - 2, batch_size)):
    text[i, 0] = SOT
    text[i, 1:n + 1] = rng.integers(1, SOT, n)
    text[i, n + 1] = EOT
  return images, text


def model_flops(model):
  """Training FLOPs per sample (forward x 3) of the spec, counted the same for both."""
  w, depth = SPEC["width"], SPEC["depth"]
  patches = (SPEC["image_size"] // SPEC["patch_size"]) ** 2
  dense_layer = 12 * w * w  # qkv 3w^2 + out w^2 + MLP 8w^2

  def encoder(tokens, layers, dense=dense_layer):
    return layers * (2 * dense * tokens + 4 * tokens * tokens * w)

  vision = (2 * patches * 3 * SPEC["patch_size"] ** 2 * w + encoder(patches + 1, depth)
            + 2 * w * SPEC["embed_dim"])
  if model == "clip":
    text = encoder(SPEC["context"], depth) + 2 * w * SPEC["embed_dim"]
    return 3 * (vision + text)
  # CoCa: unimodal text with the class token; decoder on context-1 positions, each layer
  # self-attention + MLP + cross-attention (queries and output on text, keys/values on
  # the patches) + MLP; vocabulary head on those positions.
  positions = SPEC["context"] - 1
  text = encoder(SPEC["context"] + 1, depth) + 2 * w * SPEC["embed_dim"]
  decoder = SPEC["decoder_depth"] * (
      2 * positions * (12 * w * w + 2 * w * w + 8 * w * w) + 4 * positions * positions * w
      + 2 * patches * 2 * w * w + 4 * positions * patches * w)
  head = 2 * positions * w * SPEC["vocab"]
  return 3 * (vision + text + decoder + head)


def parse_overrides(items):
  """["model.scan=False", ...] -> {"model.scan": False, ...} (Python literals, else strings)."""
  import ast
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r}: expected field=value")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def vlp_config(model, batch_size, overrides=None):
  """The spec as a vlp_jax config: VLP_OPTIONS, then `overrides` {"model.scan": False}."""
  from vlp_jax import config_lib
  c = config_lib.base_config()
  m = c.model
  m.name = model
  m.image_size, m.patch_size = SPEC["image_size"], SPEC["patch_size"]
  m.vision_width = m.text_width = SPEC["width"]
  m.vision_depth = m.text_depth = SPEC["depth"]
  m.vision_heads = m.text_heads = SPEC["heads"]
  m.vocab_size, m.context_length, m.embed_dim = SPEC["vocab"], SPEC["context"], SPEC["embed_dim"]
  m.activation = "quick_gelu"
  if model == "coca":
    m.context_length = SPEC["context"] - 1  # our captions carry no start token (models/coca.py)
    m.multimodal_depth = SPEC["decoder_depth"]
    m.coca_pooling, m.multimodal_layer = "cls", "open_clip"
  c.train.batch_size = batch_size
  c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps = LR, WEIGHT_DECAY, 1
  c.optim.clip_norm = 0.0  # open_clip clips only when asked
  c.mesh.data, c.mesh.fsdp, c.mesh.model = -1, 1, 1
  c.data.train = "builtin:shapes:train"
  c.update_from_flattened_dict({**VLP_OPTIONS, **(overrides or {})})
  config_lib.validate(c)
  return c


def vlp_tokens(model, text):
  """open_clip's captions in our layout: CLIP reads them as they are; CoCa's carry no start
  token (EOS doubles as the decoder's start symbol)."""
  return text[:, 1:] if model == "coca" else text


def open_clip_model(model):
  import torch
  from vlp_jax.models import import_open_clip
  open_clip = import_open_clip.open_clip_package()
  vision = dict(image_size=SPEC["image_size"], patch_size=SPEC["patch_size"],
                width=SPEC["width"], layers=SPEC["depth"], head_width=SPEC["width"] // SPEC["heads"])
  text = dict(context_length=SPEC["context"], vocab_size=SPEC["vocab"], width=SPEC["width"],
              heads=SPEC["heads"], layers=SPEC["depth"])
  torch.manual_seed(0)
  if model == "clip":
    return open_clip.model.CLIP(SPEC["embed_dim"], vision, text, quick_gelu=True,
                                output_dict=True), \
        open_clip.loss.ClipLoss()
  vision["output_tokens"] = True
  text.update(embed_cls=True, output_tokens=True)
  multimodal = dict(context_length=SPEC["context"], vocab_size=SPEC["vocab"],
                    width=SPEC["width"], heads=SPEC["heads"], layers=SPEC["decoder_depth"])
  net = open_clip.coca_model.CoCa(SPEC["embed_dim"], multimodal, text, vision, quick_gelu=True)
  return net, open_clip.loss.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
