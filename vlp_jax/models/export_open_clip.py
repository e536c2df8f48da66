"""Exports a vlp_jax CLIP (`model.name='clip'`) as a folder open_clip loads.

  write(out_dir, params, config.model, eos_id=tokenizer.eos_id)
  # then, with the 'local-dir:' schema of open_clip 3.3 (without it: see below)
  model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + out_dir)

The folder holds open_clip_model.safetensors (the OpenAI CLIP layout: the keys OpenAI's
released checkpoints and open_clip's ViT CLIPs use) and open_clip_config.json (open_clip's
model_cfg and the preprocess_cfg of our input pipeline). The mapping is the inverse of
import_open_clip's, read from the same table (import_open_clip.key_layout), so importing an
export gives back the same parameters bit for bit, and exporting an import the same tensors.

open_clip tokenises with OpenAI's BPE unless told otherwise; the model expects our
tokenizer's ids, so the tokenizer files are copied beside the weights and must be used to
make the token ids (open_clip.get_tokenizer does not read them). Without the schema:
  cfg = json.load(open(out_dir + "/open_clip_config.json"))
  model = open_clip.CLIP(**cfg["model_cfg"])
  open_clip.load_checkpoint(model, out_dir + "/open_clip_model.safetensors")
"""
import json
import os

import flax.linen as nn
import jax
import numpy as np

from vlp_jax.data import preprocess
from vlp_jax.data.tf_setup import tf
from vlp_jax.models import import_open_clip
from vlp_jax.models import stacking

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
# Our activations as open_clip builds them: QuickGELU is its quick_gelu flag, the others
# torch.nn.GELU with these keyword arguments.
_ACT_KWARGS = {"quick_gelu": None, "gelu": None, "gelu_tanh": {"approximate": "tanh"}}
_TORCH_LAYER_NORM_EPS = 1e-5  # open_clip's LayerNorm unless norm_kwargs say otherwise
# data.eval_resize -> open_clip's resize_mode (both: shorter side to size, centre crop).
_RESIZE_MODES = {"crop": "shortest", "squash": "squash"}


def open_clip_model_config(config_model, eos_id=None):
  """open_clip's model_cfg (CLIP with ViT towers) for `config.model`.

  `eos_id` (the tokenizer's end-of-text id) is needed for text_pool='eos': open_clip pools
  OpenAI-style at the largest token id (its default pool_type 'argmax', which older
  versions read too; our text_pool='argmax') when eos_id is the last id of the
  vocabulary, else at the first eos_id (pool_type 'eos' of open_clip 3.3), which is how
  our tower pools. Raises ValueError naming the config field open_clip cannot express.
  """
  m = config_model
  _check_expressible(m)
  text_cfg = dict(context_length=m.context_length, vocab_size=m.vocab_size,
                  width=m.text_width, heads=m.text_heads, layers=m.text_depth,
                  mlp_ratio=m.text_mlp_ratio)
  if m.text_pool == "eos":
    if eos_id is None:
      raise ValueError("model.text_pool='eos' pools at the tokenizer's end-of-text id: "
                       "pass eos_id (tokenizer.eos_id) to export it")
    if not 0 <= eos_id < m.vocab_size:
      raise ValueError(f"eos_id {eos_id} is outside model.vocab_size={m.vocab_size}")
    if eos_id != m.vocab_size - 1:
      text_cfg.update(pool_type="eos", eos_id=int(eos_id))
  elif m.text_pool == "last":  # "argmax" is open_clip's default
    text_cfg["pool_type"] = "last"
  if not m.text_causal:
    text_cfg["no_causal_mask"] = True
  if m.text_proj_bias:
    text_cfg["proj_bias"] = True
  vision_cfg = dict(image_size=m.image_size, layers=m.vision_depth, width=m.vision_width,
                    patch_size=m.patch_size, head_width=m.vision_width // m.vision_heads,
                    mlp_ratio=m.vision_mlp_ratio)
  if not m.vision_pre_norm:
    vision_cfg["no_ln_pre"] = True
  for cfg in (vision_cfg, text_cfg):
    if _ACT_KWARGS[m.activation]:
      cfg["act_kwargs"] = dict(_ACT_KWARGS[m.activation])
    if m.layer_norm_eps != _TORCH_LAYER_NORM_EPS:
      cfg["norm_kwargs"] = dict(eps=m.layer_norm_eps)
  return dict(embed_dim=m.embed_dim, quick_gelu=m.activation == "quick_gelu",
              vision_cfg=vision_cfg, text_cfg=text_cfg)


def open_clip_state_dict(params, config_model):
  """key -> float32 numpy array in the OpenAI layout, from our Clip's parameters.

  `params`: the trainer's tree (unboxed or not, numpy or jax arrays), its blocks unrolled
  (`encoder/block_{i}`) or scanned (`encoder/blocks` + `encoder/last_block`), whatever
  config_model.scan says. Every parameter must have a key and every key a parameter.
  """
  _check_expressible(config_model)
  layout = import_open_clip.key_layout(config_model)
  flat = stacking.unrolled(_flatten(nn.meta.unbox(params)))
  wanted = {entry.path: key for key, entry in layout.items()}
  missing = sorted("/".join(p) for p in set(wanted) - set(flat))
  unused = sorted("/".join(p) for p in set(flat) - set(wanted))
  if missing or unused:
    raise ValueError(f"Parameters do not match config.model for open_clip: missing {missing}, "
                     f"without an open_clip key {unused}")
  state_dict = {}
  for key, entry in layout.items():
    value = np.asarray(flat[entry.path], np.float32)
    ours = jax.eval_shape(entry.to_ours, jax.ShapeDtypeStruct(entry.shape, np.float32)).shape
    if value.shape != ours:
      raise ValueError(f"Parameter {'/'.join(entry.path)} (open_clip {key!r}) has shape "
                       f"{value.shape}; config.model makes it {ours}")
    state_dict[key] = np.ascontiguousarray(entry.to_theirs(value))
  return state_dict


def preprocess_config(config_model, eval_resize="crop"):
  """open_clip's preprocess_cfg for the images our evaluation feeds the model."""
  if eval_resize not in _RESIZE_MODES:
    raise ValueError(f"Config field 'data.eval_resize': {eval_resize!r} is not one of "
                     f"{tuple(_RESIZE_MODES)}")
  return dict(size=config_model.image_size, mean=list(preprocess.CLIP_MEAN),
              std=list(preprocess.CLIP_STD), interpolation="bilinear",
              resize_mode=_RESIZE_MODES[eval_resize])


def write(out_dir, params, config_model, tokenizer_files=(), eos_id=None, eval_resize="crop"):
  """Writes open_clip_model.safetensors, open_clip_config.json and copies of
  `tokenizer_files` (paths, or {name: path}; a folder's files are copied into a folder)
  into the new or empty folder `out_dir` (local or any tf.io.gfile path); returns its path,
  absolute when local. Nothing is overwritten.

  eos_id: the tokenizer's end-of-text id (families.get_family's), needed when
  model.text_pool='eos'; eval_resize: config.data.eval_resize."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  config = dict(model_cfg=open_clip_model_config(config_model, eos_id),
                preprocess_cfg=preprocess_config(config_model, eval_resize))
  state_dict = open_clip_state_dict(params, config_model)
  copies = _tokenizer_copies(tokenizer_files)
  out_dir = str(out_dir)
  if "://" not in out_dir:
    out_dir = os.path.abspath(out_dir)
  gfile = tf.io.gfile
  if gfile.exists(out_dir) and (not gfile.isdir(out_dir) or gfile.listdir(out_dir)):
    raise ValueError(f"{out_dir} exists and is not empty: nothing is overwritten")
  gfile.makedirs(out_dir)
  with gfile.GFile(os.path.join(out_dir, WEIGHTS_FILE), "wb") as f:
    f.write(save(state_dict))
  with gfile.GFile(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    f.write(json.dumps(config, indent=2) + "\n")
  for name, source in copies:
    if gfile.isdir(source):
      gfile.makedirs(os.path.join(out_dir, name))
      for child in gfile.listdir(source):
        if not gfile.isdir(os.path.join(source, child)):
          gfile.copy(os.path.join(source, child), os.path.join(out_dir, name, child))
    else:
      gfile.copy(source, os.path.join(out_dir, name))
  return out_dir


def _check_expressible(m):
  """What open_clip's CLIP (VisionTransformer + TextTransformer) cannot build."""
  if m.name != "clip":
    raise ValueError(f"Config field 'model.name' is {m.name!r}: only 'clip' exports to open_clip")
  if m.image_pool != "cls":
    raise ValueError(f"Config field 'model.image_pool' is {m.image_pool!r}: open_clip's "
                     "OpenAI-layout ViT pools its class token ('cls')")
  if m.activation not in _ACT_KWARGS:
    raise ValueError(f"Config field 'model.activation' is {m.activation!r}: open_clip towers "
                     f"use one of {tuple(_ACT_KWARGS)}")
  if m.vision_patch_bias:
    raise ValueError("Config field 'model.vision_patch_bias' is True: open_clip's patch "
                     "projection (visual.conv1) has no bias")
  if not m.vision_proj:
    raise ValueError("Config field 'model.vision_proj' is False: open_clip's ViT always "
                     "projects the pooled token (visual.proj)")


def _flatten(tree, prefix=()):
  if not hasattr(tree, "items"):
    return {prefix: tree}
  out = {}
  for name, value in tree.items():
    out.update(_flatten(value, prefix + (name,)))
  return out


def _tokenizer_copies(files):
  """[(name in the export, source file or folder)] from a mapping of the same or a list of
  paths (named by their base names). Refuses missing sources and taken names."""
  if hasattr(files, "items"):
    pairs = [(name, str(path)) for name, path in files.items()]
  else:
    pairs = [(os.path.basename(os.path.normpath(str(path))), str(path)) for path in files]
  taken = {WEIGHTS_FILE, CONFIG_FILE}
  for name, source in pairs:
    if not tf.io.gfile.exists(source):
      raise ValueError(f"Tokenizer file {source} does not exist")
    if name in taken:
      raise ValueError(f"Tokenizer file {source}: a file named {name} is already exported")
    taken.add(name)
  return pairs
