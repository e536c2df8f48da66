"""Imports Hugging Face transformers CLIP and SigLIP checkpoints as parameters of our `Clip`.

  config.model.update(config_from_hf(HF_DIR))     # name clip|siglip, sizes, the pieces below
  params = params_from_hf(HF_DIR, config.model)   # nested dicts of float32 numpy arrays
  family = families.get_family(config, eos_id=...)  # see "Text ids"

  python -m vlp_jax.models.import_hf_clip --hf=HF_DIR --out=WORKDIR [--scan]

HF_DIR is a `CLIPModel` or `SiglipModel` checkpoint: a folder with config.json and
model.safetensors (or a sharded model.safetensors.index.json, or pytorch_model.bin where
torch is installed), or the weights file with config.json beside it. The command line
writes a weights-only workdir (train/weights_dir.py) for `model.init_from=WORKDIR` and
prints the config overrides, which WORKDIR/import_config.json keeps too.

Where each of our parameters comes from (HF keys under vision_model. / text_model.):
  image_tower/patch_embed       embeddings.patch_embedding (SigLIP's has a bias:
                                model.vision_patch_bias)
  image_tower/cls               embeddings.class_embedding (CLIP)
  image_tower/pos_embedding     embeddings.position_embedding
  image_tower/ln_pre            pre_layrnorm (CLIP; SigLIP has none: model.vision_pre_norm)
  */encoder/block_i             encoder.layers.i: layer_norm1, self_attn.{q,k,v,out}_proj,
                                layer_norm2, mlp.fc1, mlp.fc2 (q, k, v into qkv_kernel)
  image_tower/ln_post           post_layernorm
  image_tower/map_head          head: probe, attention (torch MultiheadAttention, in_proj
                                rows q | k | v: q_kernel and kv_kernel), layernorm, mlp
                                (SigLIP, model.image_pool=map)
  image_tower/proj              visual_projection (CLIP; SigLIP's MAP output is the
                                embedding: model.vision_proj=False)
  text_tower/token_embedding, pos_embedding   embeddings.* (the first context_length rows)
  text_tower/ln_final           final_layer_norm
  text_tower/proj               text_projection (CLIP) / text_model.head, with its bias
                                (SigLIP: model.text_proj_bias)
  log_logit_scale, logit_bias   logit_scale, logit_bias (SigLIP)
Buffers (embeddings.position_ids, stored by older checkpoints) must be arange and are
dropped; any other key, or a missing one, is a ValueError naming it, and so is a shape
that the config does not give.

Text ids: as HF's tokenizers produce them. CLIP: [SOT] pieces [EOT], then padding, causal,
pooled where HF pools: configs with text_config.eos_token_id 2 (before transformers PR
#24773) at the row's largest id (model.text_pool=argmax; the end-of-text id 49407 is the
vocabulary's last), others at the first eos_token_id (text_pool=eos: build the family with
eos_id = eos_token_id, which import_config.json records). SigLIP: pieces and </s>, padded
with </s> to the context length (64), bidirectional, pooled at the last position
(text_pool=last). Images: NHWC, normalised as HF's image processor does, by the caller.

Refused (one line naming the field): model types other than clip and siglip (SigLIP 2,
chinese_clip...), towers with different activations or LayerNorm epsilons (our model has
one of each), activations we lack, non-square images or patches, other than 3 channels,
SigLIP without its MAP head (vision_use_head=False) or with a text projection size other
than the vision width, several eos ids.
"""
import argparse
import json
import math
import os
import sys

import jax
import ml_collections
import numpy as np

from vlp_jax import config_lib
from vlp_jax.models import import_hf_blip
from vlp_jax.models import stacking

ACTIVATIONS = import_hf_blip.ACTIVATIONS  # HF hidden_act -> ours
# Fields that only initialise a fresh model: the imported parameters carry their values.
INIT_ONLY = ("logit_scale_init", "logit_scale_max", "logit_bias_init")
IGNORED_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
OLD_EOS = 2  # HF CLIP configs before PR #24773: pooled at the largest id instead

# HF's defaults, for config.json files that leave them out (save_pretrained drops some).
_DEFAULTS = {
    "clip": dict(
        top=dict(projection_dim=512, logit_scale_init_value=2.6592),
        text=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                  num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                    hidden_act="quick_gelu", layer_norm_eps=1e-5)),
    "siglip": dict(
        top={},
        text=dict(vocab_size=32000, hidden_size=768, intermediate_size=3072,
                  num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, projection_size=None),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True)),
}


# ---- config ------------------------------------------------------------------------------------

def _read_config(path):
  path = str(path)
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"No config.json in {directory or '.'}: the HF config fixes the heads, "
                     "epsilon, activation and pooling")
  with open(config_path) as f:
    return json.load(f)


def _hf_dicts(config):
  """(kind, top-level, text, vision) dicts of a CLIPConfig / SiglipConfig dict, HF's defaults
  under what it sets (old CLIP configs' text_config_dict / vision_config_dict win, as in HF)."""
  kind = config.get("model_type")
  if kind not in _DEFAULTS:
    raise ValueError(f"config.json model_type={kind!r}: only 'clip' (CLIPModel) and 'siglip' "
                     "(SiglipModel) import")
  defaults = _DEFAULTS[kind]
  top = {**defaults["top"], **config}
  towers = []
  for tower in ("text", "vision"):
    towers.append({**defaults[tower], **(config.get(f"{tower}_config") or {}),
                   **(config.get(f"{tower}_config_dict") or {})})
  return kind, top, towers[0], towers[1]


def _square(vision, name):
  value = vision[name]
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"Config field vision_config.{name}={value}: only square images and "
                       "patches import")
    value = value[0]
  return int(value)


def _mlp_ratio(mlp, width):
  """A ratio that clip.py's int(width * ratio) turns back into `mlp`."""
  ratio = mlp / width
  return ratio if int(width * ratio) == mlp else (mlp + 0.5) / width


def config_from_hf(path_or_config):
  """The `config.model` fields a CLIP / SigLIP checkpoint fixes, for config.model.update:
  name, sizes, activation, poolings, causality, layer_norm_eps, the vision_patch_bias /
  vision_pre_norm / vision_proj / text_proj_bias pieces, and the initial logit scale (and
  bias). `path_or_config`: the checkpoint folder (only its config.json is read), a config
  dict, or a transformers config object. context_length is the whole position table (77
  for CLIP, 64 for SigLIP); params_from_hf also takes a shorter one.

  The initial scale and bias are not the trained ones (the parameters carry those): CLIP's
  logit_scale_init_value, SigLIP's paper values (10, -10; no cap).
  """
  c = path_or_config
  if isinstance(c, (str, os.PathLike)):
    c = _read_config(c)
  c = dict(c.to_dict() if hasattr(c, "to_dict") else c)
  kind, top, text, vision = _hf_dicts(c)
  acts = (text["hidden_act"], vision["hidden_act"])
  for tower, act in zip(("text", "vision"), acts):
    if act not in ACTIVATIONS:
      raise ValueError(f"Config field {tower}_config.hidden_act={act!r}: not one of "
                       f"{sorted(ACTIVATIONS)}")
  if ACTIVATIONS[acts[0]] != ACTIVATIONS[acts[1]]:
    raise ValueError(f"Config fields text_config.hidden_act={acts[0]!r} and "
                     f"vision_config.hidden_act={acts[1]!r} differ: our model has one activation")
  eps = (float(text["layer_norm_eps"]), float(vision["layer_norm_eps"]))
  if not np.isclose(eps[0], eps[1], rtol=1e-6):
    raise ValueError(f"Config fields text_config.layer_norm_eps={eps[0]} and "
                     f"vision_config.layer_norm_eps={eps[1]} differ: our model has one epsilon")
  if int(vision["num_channels"]) != 3:
    raise ValueError(f"Config field vision_config.num_channels={vision['num_channels']}: "
                     "only RGB (3) images")
  image, patch = _square(vision, "image_size"), _square(vision, "patch_size")
  if image % patch:
    raise ValueError(f"Config field vision_config.image_size={image} is not a multiple of "
                     f"patch_size={patch}")
  v_width, t_width = int(vision["hidden_size"]), int(text["hidden_size"])
  for tower, d in (("vision", vision), ("text", text)):
    if int(d["hidden_size"]) % int(d["num_attention_heads"]):
      raise ValueError(f"Config field {tower}_config.num_attention_heads="
                       f"{d['num_attention_heads']} does not divide hidden_size={d['hidden_size']}")
  fields = dict(
      name=kind, image_size=image, patch_size=patch, vision_width=v_width,
      vision_depth=int(vision["num_hidden_layers"]),
      vision_heads=int(vision["num_attention_heads"]),
      vision_mlp_ratio=_mlp_ratio(int(vision["intermediate_size"]), v_width),
      vocab_size=int(text["vocab_size"]), context_length=int(text["max_position_embeddings"]),
      text_width=t_width, text_depth=int(text["num_hidden_layers"]),
      text_heads=int(text["num_attention_heads"]),
      text_mlp_ratio=_mlp_ratio(int(text["intermediate_size"]), t_width),
      activation=ACTIVATIONS[acts[0]], layer_norm_eps=eps[0])
  if kind == "clip":
    eos = text["eos_token_id"]
    if not isinstance(eos, int) or isinstance(eos, bool):
      raise ValueError(f"Config field text_config.eos_token_id={eos!r}: HF CLIP pools at one "
                       "end-of-text id")
    fields.update(
        embed_dim=int(top["projection_dim"]), image_pool="cls",
        text_pool="argmax" if eos == OLD_EOS else "eos", text_causal=True,
        vision_patch_bias=False, vision_pre_norm=True, vision_proj=True, text_proj_bias=False,
        logit_scale_init=math.exp(float(top["logit_scale_init_value"])), logit_scale_max=100.0)
  else:
    if not vision["vision_use_head"]:
      raise ValueError("Config field vision_config.vision_use_head=False: SigLIP without its "
                       "MAP head has no image embedding")
    embed_dim = int(text["projection_size"] or t_width)
    if embed_dim != v_width:
      raise ValueError(f"Config field text_config.projection_size={embed_dim} differs from "
                       f"vision_config.hidden_size={v_width}, the image embedding's size")
    fields.update(
        embed_dim=embed_dim, image_pool="map", text_pool="last", text_causal=False,
        vision_patch_bias=True, vision_pre_norm=False, vision_proj=False, text_proj_bias=True,
        logit_scale_init=10.0, logit_scale_max=0.0, logit_bias_init=-10.0)
  return ml_collections.ConfigDict(fields)


def _eos_id(config):
  """The eos_id to build the family with (text_pool=eos), or None."""
  kind, _, text, _ = _hf_dicts(config)
  return text["eos_token_id"] if kind == "clip" and text["eos_token_id"] != OLD_EOS else None


def _model_config(config_model, scan):
  m = config_lib.base_config().model
  m.update(dict(config_model))
  if scan is not None:
    m.scan = bool(scan)
  return m


def _check_config(m, want):
  """Each config.model field against the checkpoint's, a mismatch naming the field."""
  for field, value in want.items():
    if field in INIT_ONLY:
      continue
    if field == "context_length":
      ok = 1 <= m[field] <= value
    elif field.endswith("mlp_ratio"):
      width = m[field.replace("mlp_ratio", "width")]
      ok = int(width * m[field]) == int(width * value)
    elif isinstance(value, float):
      ok = np.isclose(m[field], value, rtol=1e-6)
    else:
      ok = m[field] == value
    if not ok:
      need = f"<= {value}" if field == "context_length" else repr(value)
      raise ValueError(f"Config field 'model.{field}' is {m[field]!r}; the checkpoint needs "
                       f"{need} (config.model.update(config_from_hf(...)))")


# ---- the mapping -------------------------------------------------------------------------------

def _ident(x):
  return x


def _linear(x):
  return x.T  # torch Linear [out, in] -> our kernel [in, out]


def _ln(src, dst, width):
  return {src + ".weight": ((width,), [(dst + ("scale",), _ident)]),
          src + ".bias": ((width,), [(dst + ("bias",), _ident)])}


def _dense(src, dst, n_in, n_out, bias=True):
  out = {src + ".weight": ((n_out, n_in), [(dst + ("kernel",), _linear)])}
  if bias:
    out[src + ".bias"] = ((n_out,), [(dst + ("bias",), _ident)])
  return out


def _encoder(src, dst, depth, width, heads, mlp):
  """HF encoder layers -> our blocks; a path ending in a slot number is that part (q, k, v)
  of the fused qkv kernel or bias, stacked afterwards."""
  k = width // heads
  part = lambda x: x.T.reshape(width, heads, k)  # Linear [H*K, W] -> [W, H, K]
  out = {}
  for i in range(depth):
    s, d = f"{src}.layers.{i}.", dst + (f"block_{i}",)
    out.update(_ln(s + "layer_norm1", d + ("ln_attn",), width))
    out.update(_ln(s + "layer_norm2", d + ("ln_mlp",), width))
    for slot, name in enumerate("qkv"):
      out[f"{s}self_attn.{name}_proj.weight"] = (
          (width, width), [(d + ("attn", "qkv_kernel", slot), part)])
      out[f"{s}self_attn.{name}_proj.bias"] = (
          (width,), [(d + ("attn", "qkv_bias", slot), lambda x: x.reshape(heads, k))])
    out[s + "self_attn.out_proj.weight"] = (
        (width, width), [(d + ("attn", "out_kernel"), lambda x: x.T.reshape(heads, k, width))])
    out[s + "self_attn.out_proj.bias"] = ((width,), [(d + ("attn", "out_bias"), _ident)])
    out.update(_dense(s + "mlp.fc1", d + ("mlp", "fc1"), width, mlp))
    out.update(_dense(s + "mlp.fc2", d + ("mlp", "fc2"), mlp, width))
  return out


def _map_head(src, dst, width, heads, mlp):
  """SigLIP's pooling head. torch MultiheadAttention's in_proj rows are q | k | v, each
  heads x head_dim: q reads the probe (q_kernel), k and v the tokens (kv_kernel)."""
  k = width // heads
  rows = lambda x, a, n: x[a * width:(a + n) * width]  # n of q, k, v from the a-th
  kernel = lambda a, n: lambda x: rows(x, a, n).reshape(n, heads, k, width).transpose(3, 0, 1, 2)
  bias = lambda a, n: lambda x: rows(x, a, n).reshape(n, heads, k)
  attn = dst + ("attn",)
  out = {
      src + ".probe": ((1, 1, width), [(dst + ("probe",), lambda x: x.reshape(1, width))]),
      src + ".attention.in_proj_weight": ((3 * width, width), [
          (attn + ("q_kernel",), kernel(0, 1)), (attn + ("kv_kernel",), kernel(1, 2))]),
      src + ".attention.in_proj_bias": ((3 * width,), [
          (attn + ("q_bias",), bias(0, 1)), (attn + ("kv_bias",), bias(1, 2))]),
      src + ".attention.out_proj.weight": (
          (width, width), [(attn + ("out_kernel",), lambda x: x.T.reshape(heads, k, width))]),
      src + ".attention.out_proj.bias": ((width,), [(attn + ("out_bias",), _ident)]),
  }
  out.update(_ln(src + ".layernorm", dst + ("ln",), width))
  out.update(_dense(src + ".mlp.fc1", dst + ("mlp", "fc1"), width, mlp))
  out.update(_dense(src + ".mlp.fc2", dst + ("mlp", "fc2"), mlp, width))
  return out


def _layout(m, positions):
  """HF key -> (its shape, [(our unrolled path, converter)]) for config.model m; `positions`:
  the checkpoint's text position rows (the first m.context_length are kept)."""
  vw, tw, p = m.vision_width, m.text_width, m.patch_size
  v_mlp, t_mlp = int(vw * m.vision_mlp_ratio), int(tw * m.text_mlp_ratio)
  grid = m.image_size // p
  image, text = ("image_tower",), ("text_tower",)
  siglip = m.image_pool == "map"
  emb = "vision_model.embeddings."
  out = {
      # torch conv [out, in, kh, kw] -> flax conv on NHWC [kh, kw, in, out]
      emb + "patch_embedding.weight": (
          (vw, 3, p, p), [(image + ("patch_embed", "kernel"), lambda x: x.transpose(2, 3, 1, 0))]),
      emb + "position_embedding.weight": (
          (grid * grid + (not siglip), vw), [(image + ("pos_embedding",), _ident)]),
      "text_model.embeddings.token_embedding.weight": (
          (m.vocab_size, tw), [(text + ("token_embedding",), _ident)]),
      "text_model.embeddings.position_embedding.weight": (
          (positions, tw), [(text + ("pos_embedding",), lambda x: x[:m.context_length])]),
      "logit_scale": ((), [(("log_logit_scale",), _ident)]),
  }
  out.update(_encoder("vision_model.encoder", image + ("encoder",), m.vision_depth, vw,
                      m.vision_heads, v_mlp))
  out.update(_encoder("text_model.encoder", text + ("encoder",), m.text_depth, tw,
                      m.text_heads, t_mlp))
  out.update(_ln("vision_model.post_layernorm", image + ("ln_post",), vw))
  out.update(_ln("text_model.final_layer_norm", text + ("ln_final",), tw))
  if siglip:
    out[emb + "patch_embedding.bias"] = ((vw,), [(image + ("patch_embed", "bias"), _ident)])
    out.update(_map_head("vision_model.head", image + ("map_head",), vw, m.vision_heads, v_mlp))
    out.update(_dense("text_model.head", text + ("proj",), tw, m.embed_dim))
    out["logit_bias"] = ((), [(("logit_bias",), _ident)])
  else:
    out[emb + "class_embedding"] = ((vw,), [(image + ("cls",), _ident)])
    out.update(_ln("vision_model.pre_layrnorm", image + ("ln_pre",), vw))
    out.update(_dense("visual_projection", image + ("proj",), vw, m.embed_dim, bias=False))
    out.update(_dense("text_projection", text + ("proj",), tw, m.embed_dim, bias=False))
  return out


def _ignorable(key, value):
  if key in IGNORED_BUFFERS:
    if not np.array_equal(value.reshape(-1), np.arange(value.size)):
      raise ValueError(f"Checkpoint key {key!r} is not arange: custom positions are not "
                       "supported")
    return True
  return False


def _params(config, state_dict, config_model, scan=None):
  m = _model_config(config_model, scan)
  want = config_from_hf(config)
  _check_config(m, want)
  layout = _layout(m, want.context_length)
  missing = sorted(k for k in layout if k not in state_dict)
  unused = sorted(k for k, v in state_dict.items() if k not in layout and not _ignorable(k, v))
  for what, keys in (("unused", unused), ("missing", missing)):
    if keys:
      more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
      raise ValueError(f"{want.name} checkpoint: {what} key{'s' * (len(keys) > 1)} "
                       f"{', '.join(repr(k) for k in keys[:4])}{more}")
  flat, fused = {}, {}
  for key, (shape, targets) in layout.items():
    value = np.asarray(state_dict[key], np.float32)
    if key in ("logit_scale", "logit_bias") and value.size == 1:
      value = value.reshape(())  # SigLIP stores shape [1]
    if value.shape != shape:
      raise ValueError(f"Checkpoint key {key!r}: expected shape {shape}, found {value.shape}")
    for path, convert in targets:
      if isinstance(path[-1], int):
        fused.setdefault(path[:-1], [None] * 3)[path[-1]] = convert(value)
      else:
        flat[path] = convert(value)
  flat.update({path: np.stack(parts, axis=-3) for path, parts in fused.items()})
  return _to_model_layout(flat, m)


def params_from_hf(path, config_model, scan=None):
  """Our `Clip` parameters (nested dicts of float32 numpy arrays) from the HF CLIP / SigLIP
  checkpoint at `path`, in the layout of `family.init` after nn.meta.unbox: with
  `scan` (default config_model.scan) each tower's blocks stacked under encoder/blocks (a
  pooled-only tower's last one under encoder/last_block). config_model: config.model, or a
  dict of config_from_hf's fields (and scan) over base_config's; each field the checkpoint
  fixes must match it (context_length may be shorter: the first rows of the table)."""
  config, state_dict = import_hf_blip.load_checkpoint(path)
  return _params(config, state_dict, config_model, scan)


# ---- our tree ----------------------------------------------------------------------------------

def _abstract_params(m):
  """Clip's parameter shapes for config.model m (unboxed, flat)."""
  import flax  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  from vlp_jax.models import clip  # pylint: disable=g-import-not-at-top
  module = clip.from_config(m, eos_id=0, logit_bias=families.FAMILIES[m.name].LOGIT_BIAS)
  images = jax.ShapeDtypeStruct((1, m.image_size, m.image_size, 3), np.float32)
  tokens = jax.ShapeDtypeStruct((1, m.context_length), np.int32)
  return flax.traverse_util.flatten_dict(nn.meta.unbox(jax.eval_shape(
      lambda i, t: module.init(jax.random.PRNGKey(0), i, t)["params"], images, tokens)))


def _to_model_layout(flat, m):
  """Unrolled `flat` stacked where the model scans (models/stacking.py), as nested dicts;
  guards against models/clip.py drifting away from this mapping."""
  import flax  # pylint: disable=g-import-not-at-top
  abstract = _abstract_params(m)
  expected = {p: tuple(x.shape) for p, x in stacking.unrolled(abstract).items()}
  ours = {p: tuple(v.shape) for p, v in flat.items()}
  if ours != expected:
    diff = sorted(p for p in set(ours) | set(expected) if ours.get(p) != expected.get(p))
    raise AssertionError(f"import_hf_clip no longer matches models/clip.py at "
                         f"{['/'.join(p) for p in diff[:5]]}")
  return flax.traverse_util.unflatten_dict(stacking.to_layout(flat, abstract))


# ---- command line ------------------------------------------------------------------------------

def run(hf_dir, out, scan=False):
  """Imports HF_DIR into a new weights-only workdir `out`; returns the config overrides
  (command-line flags) it fixes, also written to out/import_config.json."""
  from vlp_jax.train import weights_dir  # pylint: disable=g-import-not-at-top
  weights_dir.refuse_existing(out)
  if not os.path.exists(hf_dir):
    raise ValueError(f"--hf={hf_dir} does not exist")
  config, state_dict = import_hf_blip.load_checkpoint(hf_dir)
  fields = config_from_hf(config)
  params = _params(config, state_dict, fields, scan=scan)
  out = weights_dir.write(out, params)
  flags = [f"--config.model.{k}={v}" for k, v in sorted(fields.items())]
  flags += [f"--config.model.scan={bool(scan)}", f"--config.model.init_from={out}"]
  summary = {"out": out, "hf": os.path.abspath(hf_dir),
             "config.model": dict(fields.to_dict(), scan=bool(scan)),
             "eos_id": _eos_id(config), "overrides": flags}
  with open(os.path.join(out, "import_config.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return flags


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--hf", required=True, help="HF CLIPModel / SiglipModel folder")
  parser.add_argument("--out", required=True, help="new workdir for model.init_from")
  parser.add_argument("--scan", action="store_true", help="stack layers (model.scan)")
  args = parser.parse_args(argv)
  try:
    flags = run(args.hf, args.out, args.scan)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(" ".join(flags))


if __name__ == "__main__":
  main()
