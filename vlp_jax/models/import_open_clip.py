"""Imports OpenAI / open_clip ViT CLIP checkpoints as parameters of our `Clip`.

  python -m vlp_jax.models.import_open_clip --checkpoint=ViT-B-16.pt --out=WORKDIR [--scan]

writes a weights-only workdir (train/weights_dir.py) that `model.init_from=WORKDIR` reads:
a CLIP to fine-tune, or the frozen image tower of BLIP-2 and prefix captioning; it prints
the config overrides the checkpoint fixes. In Python:

  sd = load_state_dict("ViT-B-32.pt")           # OpenAI jit archive, open_clip .bin/.pt,
  config.model.update(config_from_state_dict(sd))  # .safetensors or .npz
  params = clip_params(sd, config.model)
  family = families.get_family(config, eos_id=49407)  # OpenAI's end-of-text id

The mapping is one table, key_layout, which models/export_open_clip.py reads backwards.
Only the OpenAI layout is mapped: ViT image tower with a class token, causal text tower
pooled at the end-of-text token, projections without bias. Other open_clip variants
(ResNet towers, layer scale, attentional pooling, timm or HF towers) have other keys and
are rejected by the key check rather than imported wrongly. Settings that leave no trace
in the weights cannot be checked here: the number of heads (see config_from_state_dict),
the activation, and the pooling type (open_clip's pool_type / final_ln_after_pool).
"""
import argparse
import collections
import json
import math
import os
import re
import sys
import zipfile

import jax
import ml_collections
import numpy as np

from vlp_jax import config_lib

# OpenAI's jit archives store these sizes as tensors beside the weights; the shapes carry them.
METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")


def config_from_state_dict(state_dict, vision_head_dim=64, text_head_dim=64,
                           activation="quick_gelu"):
  """The `config.model` fields a checkpoint fixes, for `config.model.update(...)`.

  Attention weights are [3W, W] whatever the number of heads, so heads are width / head_dim:
  64 for every OpenAI model and most open_clip ones (ViT-H-14's image tower uses 80,
  ViT-bigG-14's 104). A wrong head count imports without error and gives wrong outputs.
  The activation is not in the weights either: OpenAI and open_clip's `-quickgelu` models
  use quick_gelu, other open_clip models gelu.

  Our text tower pools at the first `eos_id` token, OpenAI and open_clip at the largest
  token id, which is their end-of-text id (49407): build the family with that eos_id and
  feed their BPE tokens; padding must stay below it.
  """
  _reject_other_layouts(state_dict)
  shape = lambda key: tuple(_require_key(state_dict, key).shape)
  vision_width, _, patch, _ = shape("visual.conv1.weight")
  grid = math.isqrt(shape("visual.positional_embedding")[0] - 1)
  if grid * grid + 1 != shape("visual.positional_embedding")[0]:
    raise ValueError(f"'visual.positional_embedding' has {shape('visual.positional_embedding')[0]} "
                     "rows, not 1 + a square number of patches")
  vocab_size, text_width = shape("token_embedding.weight")
  context_length = shape("positional_embedding")[0]
  embed_dim = shape("text_projection")[1]
  depths = {"visual.": 0, "": 0}
  for key in state_dict:
    match = _RESBLOCK.match(key)
    if match:
      tower = match.group(1) or ""
      depths[tower] = max(depths[tower], int(match.group(2)) + 1)
  vision_mlp = shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
  text_mlp = shape("transformer.resblocks.0.mlp.c_fc.weight")[0]
  for name, width, head_dim in (("vision", vision_width, vision_head_dim),
                                ("text", text_width, text_head_dim)):
    if width % head_dim:
      raise ValueError(f"The {name} width {width} is not a multiple of head_dim={head_dim}")
  log_scale = float(np.asarray(_require_key(state_dict, "logit_scale")).reshape(()))
  return ml_collections.ConfigDict(dict(
      name="clip", image_size=grid * patch, patch_size=patch,
      vision_width=vision_width, vision_depth=depths["visual."],
      vision_heads=vision_width // vision_head_dim, vision_mlp_ratio=vision_mlp / vision_width,
      vocab_size=vocab_size, context_length=context_length, text_width=text_width,
      text_depth=depths[""], text_heads=text_width // text_head_dim,
      text_mlp_ratio=text_mlp / text_width, embed_dim=embed_dim, activation=activation,
      image_pool="cls", text_pool="eos", text_causal=True,
      logit_scale_init=math.exp(log_scale), logit_scale_max=100.0))


def clip_params(state_dict, config_model, scan=None):
  """Our `Clip` parameters (nested dicts of float32 numpy arrays) from an OpenAI state dict.

  The tree has the structure and shapes of `family.init` after `nn.meta.unbox`, the form
  the trainer keeps; `scan` (default: config_model.scan) stacks each tower's blocks under
  `encoder/blocks` (all but the last, which is `encoder/last_block`) instead of
  `encoder/block_{i}`. config_model may hold only the fields
  of config_from_state_dict; the rest take base_config's defaults. Every checkpoint key
  must be used and every expected one present; wrong shapes raise ValueError naming the key.
  """
  m = config_lib.base_config().model
  m.update(dict(config_model))
  if scan is not None:
    m.scan = bool(scan)
  for field, want in (("name", "clip"), ("image_pool", "cls"), ("text_pool", "eos"),
                      ("text_causal", True)):
    if m[field] != want:
      raise ValueError(f"Config field 'model.{field}' is {m[field]!r}; OpenAI CLIP needs {want!r}")
  _reject_other_layouts(state_dict)
  layout = key_layout(m)
  found = {k: v for k, v in state_dict.items() if k not in METADATA_KEYS}
  missing = sorted(set(layout) - set(found))
  unused = sorted(set(found) - set(layout))
  if missing or unused:
    raise ValueError(f"Checkpoint does not match the config: missing keys {missing}, "
                     f"unused keys {unused}")
  params = {}
  for key, entry in layout.items():
    value = np.asarray(found[key], np.float32)
    if key == "logit_scale" and value.size == 1:
      value = value.reshape(())  # open_clip's nonscalar_logit_scale stores shape [1]
    if value.shape != entry.shape:
      raise ValueError(f"Checkpoint key {key!r}: expected shape {entry.shape}, "
                       f"found {value.shape}")
    _set(params, entry.path, entry.to_ours(value))
  for tower in ("image_tower", "text_tower"):
    encoder = params[tower]["encoder"]
    blocks = [encoder.pop(f"block_{i}") for i in range(len(encoder))]
    if m.scan:  # CLIP towers are pooled: the last block runs pruned, outside the scan
      encoder["last_block"] = blocks.pop()
      if blocks:
        encoder["blocks"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
    else:
      encoder.update({f"block_{i}": block for i, block in enumerate(blocks)})
  _check_against_model(params, m)
  return params


# What open_clip writes into a model folder (export_open_clip.py, the HF hub's open_clip repos).
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
FOLDER_CONFIG = "open_clip_config.json"


def checkpoint_file(path):
  """The weights file of `path`: the file itself, or a model folder's (FOLDER_WEIGHTS)."""
  path = str(path)
  if not os.path.isdir(path):
    return path
  for name in FOLDER_WEIGHTS:
    if os.path.exists(os.path.join(path, name)):
      return os.path.join(path, name)
  raise ValueError(f"{path} is a folder without {' or '.join(FOLDER_WEIGHTS)}")


def config_for(path, state_dict=None):
  """config_from_state_dict of a checkpoint, with the heads and the activation that the
  open_clip_config.json beside it states (else OpenAI's: 64-wide heads, quick_gelu)."""
  file = checkpoint_file(path)
  state_dict = load_state_dict(file) if state_dict is None else state_dict
  beside = os.path.join(os.path.dirname(file), FOLDER_CONFIG)
  if not os.path.exists(beside):
    return config_from_state_dict(state_dict)
  with open(beside) as f:
    cfg = json.load(f)["model_cfg"]
  text_width = _require_key(state_dict, "token_embedding.weight").shape[1]
  text_heads = cfg.get("text_cfg", {}).get("heads", 8)
  return config_from_state_dict(
      state_dict, cfg.get("vision_cfg", {}).get("head_width", 64), text_width // text_heads,
      "quick_gelu" if cfg.get("quick_gelu") else "gelu")


def load_state_dict(path):
  """key -> float32 numpy array from .safetensors, .npz, or torch .pt/.bin/jit archives.

  A leading "module." (DistributedDataParallel) is stripped, and open_clip's training
  checkpoints ({"state_dict": ..., "optimizer": ...}) give their state_dict.
  """
  path = str(path)
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"Reading {path} needs the 'safetensors' package "
                        "(pip install safetensors)") from e
    raw = load_file(path)
  elif path.endswith(".npz"):
    with np.load(path) as npz:
      raw = {k: npz[k] for k in npz.files}
  else:
    raw = {k: v.detach().float().cpu().numpy() for k, v in _torch_state_dict(path).items()}
  out = {}
  for key, value in raw.items():
    key = key[len("module."):] if key.startswith("module.") else key
    out[key] = np.asarray(value, np.float32)
  return out


def open_clip_package():
  """open_clip with its model, coca_model and loss modules, for parity checks and benchmarks.

  PyPI's torchvision does not load beside a CPU-only torch build ("operator
  torchvision::nms does not exist"), and open_clip's package __init__ imports it for its
  image transforms. When the ordinary import fails, torchvision is replaced by a placeholder
  (only open_clip's ResNet towers use it) and the package __init__ is skipped. Raises
  ImportError when open_clip is not installed.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  modules = ("open_clip.model", "open_clip.coca_model", "open_clip.loss")
  try:
    import open_clip  # pylint: disable=g-import-not-at-top
    for name in modules:
      importlib.import_module(name)
    return open_clip
  except ImportError:
    raise
  except Exception:  # pylint: disable=broad-except
    for name in [n for n in sys.modules
                 if n.split(".")[0] in ("open_clip", "torchvision")]:
      del sys.modules[name]
  try:  # transformers looks torchvision up when imported (by open_clip's HF text towers):
    import transformers  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  except ImportError:  # before the placeholder below, which has no module spec to find
    pass
  spec = importlib.util.find_spec("open_clip")
  torchvision = types.ModuleType("torchvision")
  ops = types.ModuleType("torchvision.ops")
  misc = types.ModuleType("torchvision.ops.misc")
  torchvision.__path__, ops.__path__ = [], []

  class FrozenBatchNorm2d:  # pylint: disable=too-few-public-methods
    def __init__(self, *args, **kwargs):
      raise NotImplementedError("torchvision is not importable here")
  misc.FrozenBatchNorm2d = FrozenBatchNorm2d
  sys.modules.update({"torchvision": torchvision, "torchvision.ops": ops,
                      "torchvision.ops.misc": misc})
  package = types.ModuleType("open_clip")
  package.__path__ = list(spec.submodule_search_locations)
  sys.modules["open_clip"] = package
  for name in modules:
    importlib.import_module(name)
  return package


def _torch_state_dict(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs the 'torch' package; or convert it to "
                      ".safetensors or .npz where torch is installed") from e
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      # TorchScript archives (OpenAI's released models) carry their code beside the data.
      scripted = any("/code/" in name or name.endswith("constants.pkl")
                     for name in archive.namelist())
    if scripted:
      return torch.jit.load(path, map_location="cpu").state_dict()
  loaded = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
    loaded = loaded["state_dict"]
  if not isinstance(loaded, dict):
    raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
  return loaded


def _reject_other_layouts(state_dict):
  """Names the open_clip variants we cannot map before the long missing-key list does."""
  if "visual.layer1.0.conv1.weight" in state_dict or "visual.attnpool.c_proj.weight" in state_dict:
    raise ValueError("This checkpoint has a ResNet image tower (OpenAI RN50...); "
                     "only ViT towers can be imported")
  for key in state_dict:
    if key.startswith(("visual.trunk.", "text.")):
      raise ValueError(f"Key {key!r}: timm / HF / custom-text towers cannot be imported; "
                       "only the OpenAI CLIP layout")


def _require_key(state_dict, key):
  if key not in state_dict:
    raise ValueError(f"Checkpoint has no {key!r}: not an OpenAI-layout ViT CLIP")
  return np.asarray(state_dict[key])


class Entry(collections.namedtuple("Entry", "shape path to_ours to_theirs")):
  """One checkpoint tensor: its OpenAI shape, our parameter path (unrolled block names),
  and the conversions both ways (pure reshapes and transposes: exact inverses)."""


_IDENT = (lambda x: x, lambda x: x)
_TRANSPOSE = (lambda x: x.T, lambda x: x.T)


def key_layout(m):
  """checkpoint key -> Entry, for `config.model` m: the one table both the import and
  models/export_open_clip.py read."""
  vision_width, text_width, p = m.vision_width, m.text_width, m.patch_size
  grid = m.image_size // p
  layout = {
      # torch conv [out, in, kh, kw] <-> flax conv on NHWC [kh, kw, in, out]
      "visual.conv1.weight": Entry((vision_width, 3, p, p), ("image_tower", "patch_embed", "kernel"),
                                   lambda x: x.transpose(2, 3, 1, 0),
                                   lambda x: x.transpose(3, 2, 0, 1)),
      "visual.class_embedding": Entry((vision_width,), ("image_tower", "cls"), *_IDENT),
      "visual.positional_embedding": Entry((grid * grid + 1, vision_width),
                                           ("image_tower", "pos_embedding"), *_IDENT),
      "visual.proj": Entry((vision_width, m.embed_dim), ("image_tower", "proj", "kernel"),
                           *_IDENT),
      "token_embedding.weight": Entry((m.vocab_size, text_width),
                                      ("text_tower", "token_embedding"), *_IDENT),
      "positional_embedding": Entry((m.context_length, text_width),
                                    ("text_tower", "pos_embedding"), *_IDENT),
      "logit_scale": Entry((), ("log_logit_scale",), *_IDENT),
  }
  if m.text_proj_bias:  # open_clip's text_cfg proj_bias: an nn.Linear, [out, in]
    layout.update({
        "text_projection.weight": Entry((m.embed_dim, text_width),
                                        ("text_tower", "proj", "kernel"), *_TRANSPOSE),
        "text_projection.bias": Entry((m.embed_dim,), ("text_tower", "proj", "bias"), *_IDENT)})
  else:
    layout["text_projection"] = Entry((text_width, m.embed_dim),
                                      ("text_tower", "proj", "kernel"), *_IDENT)
  norms = [("visual.ln_post", "image_tower", "ln_post", vision_width),
           ("ln_final", "text_tower", "ln_final", text_width)]
  if m.vision_pre_norm:  # open_clip's vision_cfg no_ln_pre when not
    norms.append(("visual.ln_pre", "image_tower", "ln_pre", vision_width))
  for key, tower, name, width in norms:
    layout.update(_layer_norm(key, (tower, name), width))
  towers = (("visual.", "image_tower", vision_width, m.vision_depth, m.vision_heads,
             int(vision_width * m.vision_mlp_ratio)),
            ("", "text_tower", text_width, m.text_depth, m.text_heads,
             int(text_width * m.text_mlp_ratio)))
  for prefix, tower, width, depth, heads, mlp in towers:
    head_dim = width // heads
    for i in range(depth):
      src = f"{prefix}transformer.resblocks.{i}."
      dst = (tower, "encoder", f"block_{i}")
      layout.update(_layer_norm(src + "ln_1", dst + ("ln_attn",), width))
      layout.update(_layer_norm(src + "ln_2", dst + ("ln_mlp",), width))
      layout.update({
          # torch in_proj rows: q, k, v blocks of W rows, each block heads x head_dim rows.
          src + "attn.in_proj_weight": Entry(
              (3 * width, width), dst + ("attn", "qkv_kernel"),
              lambda x, h=heads, k=head_dim, w=width: x.reshape(3, h, k, w).transpose(3, 0, 1, 2),
              lambda x, w=width: x.transpose(1, 2, 3, 0).reshape(3 * w, w)),
          src + "attn.in_proj_bias": Entry(
              (3 * width,), dst + ("attn", "qkv_bias"),
              lambda x, h=heads, k=head_dim: x.reshape(3, h, k),
              lambda x, w=width: x.reshape(3 * w)),
          # out_proj input columns are the heads' outputs concatenated.
          src + "attn.out_proj.weight": Entry(
              (width, width), dst + ("attn", "out_kernel"),
              lambda x, h=heads, k=head_dim, w=width: x.T.reshape(h, k, w),
              lambda x, w=width: x.reshape(w, w).T),
          src + "attn.out_proj.bias": Entry((width,), dst + ("attn", "out_bias"), *_IDENT),
          src + "mlp.c_fc.weight": Entry((mlp, width), dst + ("mlp", "fc1", "kernel"),
                                         *_TRANSPOSE),
          src + "mlp.c_fc.bias": Entry((mlp,), dst + ("mlp", "fc1", "bias"), *_IDENT),
          src + "mlp.c_proj.weight": Entry((width, mlp), dst + ("mlp", "fc2", "kernel"),
                                           *_TRANSPOSE),
          src + "mlp.c_proj.bias": Entry((width,), dst + ("mlp", "fc2", "bias"), *_IDENT),
      })
  return layout


def _layer_norm(key, path, width):
  return {f"{key}.weight": Entry((width,), path + ("scale",), *_IDENT),
          f"{key}.bias": Entry((width,), path + ("bias",), *_IDENT)}


def _set(tree, path, value):
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _check_against_model(params, m):
  """Guards against our model's layout drifting away from this mapping."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from vlp_jax.models import clip  # pylint: disable=g-import-not-at-top
  module = clip.from_config(m, eos_id=0)
  images = jax.ShapeDtypeStruct((1, m.image_size, m.image_size, 3), np.float32)
  tokens = jax.ShapeDtypeStruct((1, m.context_length), np.int32)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda i, t: module.init(jax.random.PRNGKey(0), i, t)["params"], images, tokens))
  ours = jax.tree_util.tree_flatten_with_path(params)[0]
  want = jax.tree_util.tree_flatten_with_path(abstract)[0]
  ours = {jax.tree_util.keystr(k): v.shape for k, v in ours}
  want = {jax.tree_util.keystr(k): v.shape for k, v in want}
  if ours != want:
    diff = sorted(k for k in set(ours) | set(want) if ours.get(k) != want.get(k))
    raise AssertionError(f"import_open_clip no longer matches models/clip.py at {diff[:5]}")


def run(checkpoint, out, scan=False, vision_head_dim=64, text_head_dim=64,
        activation="quick_gelu"):
  """Imports `checkpoint` into a new weights-only workdir `out`; returns the config
  overrides (command-line flags) it fixes."""
  from vlp_jax.train import weights_dir  # pylint: disable=g-import-not-at-top
  weights_dir.refuse_existing(out)
  state_dict = load_state_dict(checkpoint)
  fields = config_from_state_dict(state_dict, vision_head_dim, text_head_dim, activation)
  params = clip_params(state_dict, fields, scan=scan)
  out = weights_dir.write(out, params)
  flags = [f"--config.model.{k}={v}" for k, v in sorted(fields.items())]
  flags += [f"--config.model.scan={scan}", f"--config.model.init_from={out}"]
  with open(f"{out}/import_config.json", "w") as f:
    json.dump({"checkpoint": str(checkpoint), "overrides": flags}, f, indent=2)
  return flags


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True,
                      help=".pt/.bin (OpenAI, open_clip), .safetensors or .npz")
  parser.add_argument("--out", required=True, help="new workdir for model.init_from")
  parser.add_argument("--scan", action="store_true", help="stack layers (model.scan)")
  parser.add_argument("--vision_head_dim", type=int, default=64)
  parser.add_argument("--text_head_dim", type=int, default=64)
  parser.add_argument("--activation", default="quick_gelu",
                      help="quick_gelu (OpenAI, open_clip -quickgelu) or gelu")
  args = parser.parse_args(argv)
  try:
    flags = run(args.checkpoint, args.out, args.scan, args.vision_head_dim,
                args.text_head_dim, args.activation)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(" ".join(flags))


if __name__ == "__main__":
  main()
