"""Imports Hugging Face transformers BLIP checkpoints as parameters of our `Blip`.

  m = hf_config(retrieval_path=RET, caption_path=CAP)       # config.model fields
  config.model.update(m)
  params = import_blip(RET, CAP, config_model=config.model)  # nested dicts of numpy arrays

  python -m vlp_jax.models.import_hf_blip --retrieval=DIR --caption=DIR --out=params.npz

RET is a `BlipForImageTextRetrieval` checkpoint (ITC/ITM: Salesforce/blip-itm-*), CAP a
`BlipForConditionalGeneration` one (captioning: Salesforce/blip-image-captioning-*): a
directory holding config.json and model.safetensors (or a sharded index, or
pytorch_model.bin when torch is installed), or the weights file itself with config.json
beside it.

Where each of our parameters comes from:
  image/tower, image/proj       vision_model.*, vision_proj          (image tower: shared)
  embed                         *.embeddings (word, position, LayerNorm)          (shared)
  text_layers/*/self_attn, ln_self   text_encoder ... attention     (retrieval only)
  text_layers/*/causal_attn, ln_causal  text_decoder ... attention  (caption only)
  text_layers/*/cross_attn, ln_cross   ... crossattention                         (shared)
  text_layers/*/mlp, ln_mlp           ... intermediate / output                   (shared)
  text_proj, itm_head           text_proj, itm_head                 (retrieval only)
  lm_head                       text_decoder.cls.predictions        (caption only)
  log_logit_scale               config_model.logit_scale_init (HF drops BLIP's `temp`)

Our BLIP shares the image tower, embeddings, cross-attention and MLP between the encoder and
the decoder (as BLIP's pretraining does); HF's two fine-tuned checkpoints each have their
own. With both, `shared_from` picks which checkpoint gives the shared weights: "retrieval"
(default: ITC and ITM are exact, captions come from the decoder's own self-attention and head
over the retrieval model's tower, embeddings, cross-attention and MLP, so they differ from
HF's captioning model) or "caption" (captioning exact, ITC/ITM approximate). Parameters
neither checkpoint gives (the decoder's self-attention and LM head without a captioning
checkpoint; the projections and ITM head without a retrieval one) come from `base_params`
when given, else from a fresh initialisation (seed `seed`); they are logged.

Mapping notes (transformers 5.x modeling_blip.py / modeling_blip_text.py):
- HF text layers have separate query/key/value Linears: stacked into our fused
  qkv_kernel [W, 3, H, K] (self-attention) and q_kernel [W, 1, H, K] + kv_kernel
  [W_img, 2, H, K] (cross-attention; keys/values read the ViT's width).
- The text embeddings are word + learned absolute positions (position_ids = arange, a
  non-persistent buffer; older checkpoints that store it must hold arange), no token types.
  The position table is cut to config_model.context_length (<= max_position_embeddings).
- LayerNorm epsilons must be ours (text 1e-12, vision 1e-5) and both towers one activation
  (HF "gelu" is the exact erf GELU): anything else is a ValueError, since our model has one
  fixed epsilon per tower and one activation.
- The LM head's decoder is tied to the word embeddings in every released BLIP (HF drops the
  tied keys when saving); a checkpoint with its own decoder.weight needs
  model.tie_word_embeddings=False (hf_config sets it). decoder.bias is tied to
  predictions.bias.
- BlipTextPooler (tanh dense on [CLS]) feeds neither ITM nor ITC; the retrieval model has
  none (add_pooling_layer=False). If a checkpoint has one it is ignored.
- HF feeds BERT ids: [CLS] (101) first for ITC and ITM (HF's retrieval model does not swap in
  [ENC]), bos/[DEC] (30522) first for the decoder, [SEP] (102) as end; pad 0 as ours. Our
  families put our own tokenizer's special ids first, so running these weights through a
  family needs a BERT-vocabulary tokenizer and those ids; calling the module methods with
  HF's ids is exact. Images are NHWC, normalised as HF's BlipImageProcessor does
  (CLIP mean/std) by the caller.
"""
import argparse
import json
import logging
import os

import jax
import ml_collections
import numpy as np

from vlp_jax import config_lib
from vlp_jax.models import import_open_clip
from vlp_jax.models import stacking

TEXT_EPS = 1e-12  # fusion.BERT_EPS
VISION_EPS = 1e-5  # layers.layer_norm's default, which the ViT uses
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "quick_gelu": "quick_gelu"}
SHARED = ("image", "embed", "cross_attn", "ln_cross", "mlp", "ln_mlp")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# ---- reading checkpoints ---------------------------------------------------------------------

def load_checkpoint(path):
  """(HF config dict, {key: float32 numpy}) of a directory or a weights file."""
  path = str(path)
  if os.path.isdir(path):
    directory = path
    found = [f for f in _WEIGHT_FILES if os.path.exists(os.path.join(path, f))]
    if not found:
      raise ValueError(f"{path} holds none of {', '.join(_WEIGHT_FILES)}")
    weights = os.path.join(path, found[0])
  else:
    directory, weights = os.path.dirname(path), path
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"No config.json beside {weights}: the HF config fixes the heads, "
                     "epsilons and activation")
  with open(config_path) as f:
    config = json.load(f)
  if weights.endswith(".index.json"):
    with open(weights) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    state_dict = {}
    for shard in shards:
      state_dict.update(import_open_clip.load_state_dict(os.path.join(directory, shard)))
  else:
    state_dict = import_open_clip.load_state_dict(weights)
  return config, state_dict


def _architecture(config, want, path):
  arch = config.get("architectures") or []
  if config.get("model_type") != "blip" or (arch and want not in arch):
    raise ValueError(f"{path}: expected a {want} checkpoint, found model_type "
                     f"{config.get('model_type')!r} architectures {arch}")


# ---- config ------------------------------------------------------------------------------------

def _dims(config):
  """Our config.model fields fixed by one HF BlipConfig dict."""
  v, t = config.get("vision_config", {}), config.get("text_config", {})
  get = lambda d, k, default: d.get(k, default)
  image = get(v, "image_size", 384)
  patch = get(v, "patch_size", 16)
  for name, value in (("image_size", image), ("patch_size", patch)):
    if isinstance(value, (list, tuple)):
      if len(set(value)) != 1:
        raise ValueError(f"vision_config.{name}={value}: only square images and patches")
      value = value[0]
    if name == "image_size":
      image = value
    else:
      patch = value
  v_width, t_width = get(v, "hidden_size", 768), get(t, "hidden_size", 768)
  acts = {ACTIVATIONS.get(get(v, "hidden_act", "gelu")), ACTIVATIONS.get(get(t, "hidden_act", "gelu"))}
  if None in acts or len(acts) != 1:
    raise ValueError(f"Activations vision {get(v, 'hidden_act', 'gelu')!r} / text "
                     f"{get(t, 'hidden_act', 'gelu')!r}: our BLIP has one activation for both "
                     f"towers, one of {sorted(ACTIVATIONS)}")
  v_eps, t_eps = get(v, "layer_norm_eps", 1e-5), get(t, "layer_norm_eps", 1e-12)
  if not np.isclose(v_eps, VISION_EPS, rtol=1e-6) or not np.isclose(t_eps, TEXT_EPS, rtol=1e-6):
    raise ValueError(f"LayerNorm epsilons vision {v_eps} / text {t_eps}: our ViT uses "
                     f"{VISION_EPS} and our text layers {TEXT_EPS}")
  return dict(
      image_size=image, patch_size=patch, vision_width=v_width,
      vision_depth=get(v, "num_hidden_layers", 12),
      vision_heads=get(v, "num_attention_heads", 12),
      vision_mlp_ratio=get(v, "intermediate_size", 3072) / v_width,
      vocab_size=get(t, "vocab_size", 30524), text_width=t_width,
      text_depth=get(t, "num_hidden_layers", 12), text_heads=get(t, "num_attention_heads", 8),
      text_mlp_ratio=get(t, "intermediate_size", 3072) / t_width,
      activation=acts.pop(),
      max_positions=get(t, "max_position_embeddings", 512),
      embed_dim=config.get("image_text_hidden_size", 256))


def hf_config(retrieval_path=None, caption_path=None, context_length=None, checkpoints=None):
  """The `config.model` fields the checkpoints fix (name, sizes, activation, tying), for
  `config.model.update(...)`. context_length: default the HF position table's length
  (512); any smaller length imports the first rows. With both checkpoints their sizes
  must agree. `checkpoints`: already loaded {"retrieval": (config, sd), "caption": ...}."""
  checkpoints = checkpoints or _load(retrieval_path, caption_path)
  dims = {role: _dims(cfg) for role, (cfg, _) in checkpoints.items()}
  if len(dims) == 2:
    keys = [k for k in dims["retrieval"] if k != "embed_dim"]
    diff = [k for k in keys if dims["retrieval"][k] != dims["caption"][k]]
    if diff:
      raise ValueError(f"The retrieval and captioning checkpoints differ in {diff}: "
                       f"{[dims['retrieval'][k] for k in diff]} vs "
                       f"{[dims['caption'][k] for k in diff]}")
  d = dict(dims.get("retrieval") or dims["caption"])
  if "retrieval" not in dims:
    d.pop("embed_dim")  # the captioning model has no projections: keep the config's
  max_positions = d.pop("max_positions")
  context_length = context_length or max_positions
  if context_length > max_positions:
    raise ValueError(f"context_length={context_length} exceeds the checkpoints' "
                     f"max_position_embeddings={max_positions}")
  tied = True
  if "caption" in checkpoints:
    tied = _tied(checkpoints["caption"][1])
  for name, width, heads in (("vision", d["vision_width"], d["vision_heads"]),
                             ("text", d["text_width"], d["text_heads"])):
    if width % heads:
      raise ValueError(f"{name} width {width} is not divisible by its {heads} heads")
  return ml_collections.ConfigDict(dict(
      d, name="blip", context_length=context_length, tie_word_embeddings=tied))


def _tied(sd):
  key = "text_decoder.cls.predictions.decoder.weight"
  emb = sd.get("text_decoder.bert.embeddings.word_embeddings.weight")
  return key not in sd or (emb is not None and np.array_equal(sd[key], emb))


def _load(retrieval_path, caption_path):
  if retrieval_path is None and caption_path is None:
    raise ValueError("Give retrieval_path and/or caption_path")
  out = {}
  for role, path, arch in (("retrieval", retrieval_path, "BlipForImageTextRetrieval"),
                           ("caption", caption_path, "BlipForConditionalGeneration")):
    if path is not None:
      config, sd = load_checkpoint(path)
      _architecture(config, arch, path)
      out[role] = (config, sd)
  return out


# ---- the mapping ---------------------------------------------------------------------------

def _ident(x):
  return x


def _linear(x):
  return x.T


def _ln(src, dst):
  return {src + ".weight": (dst + ("scale",), _ident), src + ".bias": (dst + ("bias",), _ident)}


def _dense(src, dst):
  return {src + ".weight": (dst + ("kernel",), _linear), src + ".bias": (dst + ("bias",), _ident)}


def _vision_layout(m):
  """retrieval/caption key (without the model prefix) -> (our path, converter)."""
  w, h = m.vision_width, m.vision_heads
  k = w // h
  tower = ("image", "tower")
  out = {
      "vision_model.embeddings.class_embedding": (tower + ("cls",), lambda x: x.reshape(-1)),
      "vision_model.embeddings.patch_embedding.weight": (
          tower + ("patch_embed", "kernel"), lambda x: x.transpose(2, 3, 1, 0)),
      "vision_model.embeddings.patch_embedding.bias": (tower + ("patch_embed", "bias"), _ident),
      "vision_model.embeddings.position_embedding": (
          tower + ("pos_embedding",), lambda x: x.reshape(x.shape[-2:])),
  }
  out.update(_ln("vision_model.post_layernorm", tower + ("ln_post",)))
  for i in range(m.vision_depth):
    src, dst = f"vision_model.encoder.layers.{i}.", tower + ("encoder", f"block_{i}")
    out.update(_ln(src + "layer_norm1", dst + ("ln_attn",)))
    out.update(_ln(src + "layer_norm2", dst + ("ln_mlp",)))
    out.update(_dense(src + "mlp.fc1", dst + ("mlp", "fc1")))
    out.update(_dense(src + "mlp.fc2", dst + ("mlp", "fc2")))
    out.update({
        # qkv rows: q, k, v blocks of W rows, each heads x head_dim (reshape(3, H, K)).
        src + "self_attn.qkv.weight": (
            dst + ("attn", "qkv_kernel"), lambda x: x.reshape(3, h, k, w).transpose(3, 0, 1, 2)),
        src + "self_attn.qkv.bias": (dst + ("attn", "qkv_bias"), lambda x: x.reshape(3, h, k)),
        src + "self_attn.projection.weight": (
            dst + ("attn", "out_kernel"), lambda x: x.T.reshape(h, k, w)),
        src + "self_attn.projection.bias": (dst + ("attn", "out_bias"), _ident),
    })
  return out


# Separate q/k/v Linears are gathered into one fused kernel: (our path, slot of n) entries.
class _Fused:
  def __init__(self, path, n, slot, bias, heads, head_dim):
    self.path, self.n, self.slot, self.bias = path, n, slot, bias
    self.heads, self.head_dim = heads, head_dim


def _text_layout(m, prefix, self_name, self_ln, cross_mlp):
  """HF text-layer keys under `prefix` -> (our path, converter or _Fused)."""
  w, h = m.text_width, m.text_heads
  k = w // h
  out = {}
  emb = prefix + "embeddings."
  out[emb + "word_embeddings.weight"] = (("embed", "token_embedding"), _ident)
  out[emb + "position_embeddings.weight"] = (
      ("embed", "pos_embedding"), lambda x, n=m.context_length: x[:n])
  out.update(_ln(emb + "LayerNorm", ("embed", "ln")))
  for i in range(m.text_depth):
    src, dst = f"{prefix}encoder.layer.{i}.", ("text_layers", f"layer_{i}")
    att = src + "attention."
    for slot, name in enumerate(("query", "key", "value")):
      out[att + f"self.{name}.weight"] = (dst + (self_name, "qkv_kernel"),
                                          _Fused(None, 3, slot, False, h, k))
      out[att + f"self.{name}.bias"] = (dst + (self_name, "qkv_bias"),
                                        _Fused(None, 3, slot, True, h, k))
    out[att + "output.dense.weight"] = (dst + (self_name, "out_kernel"),
                                        lambda x: x.T.reshape(h, k, w))
    out[att + "output.dense.bias"] = (dst + (self_name, "out_bias"), _ident)
    out.update(_ln(att + "output.LayerNorm", dst + (self_ln,)))
    if not cross_mlp:
      continue
    cross = src + "crossattention."
    out[cross + "self.query.weight"] = (dst + ("cross_attn", "q_kernel"),
                                        _Fused(None, 1, 0, False, h, k))
    out[cross + "self.query.bias"] = (dst + ("cross_attn", "q_bias"),
                                      _Fused(None, 1, 0, True, h, k))
    for slot, name in enumerate(("key", "value")):
      out[cross + f"self.{name}.weight"] = (dst + ("cross_attn", "kv_kernel"),
                                            _Fused(None, 2, slot, False, h, k))
      out[cross + f"self.{name}.bias"] = (dst + ("cross_attn", "kv_bias"),
                                          _Fused(None, 2, slot, True, h, k))
    out[cross + "output.dense.weight"] = (dst + ("cross_attn", "out_kernel"),
                                          lambda x: x.T.reshape(h, k, w))
    out[cross + "output.dense.bias"] = (dst + ("cross_attn", "out_bias"), _ident)
    out.update(_ln(cross + "output.LayerNorm", dst + ("ln_cross",)))
    out.update(_dense(src + "intermediate.dense", dst + ("mlp", "fc1")))
    out.update(_dense(src + "output.dense", dst + ("mlp", "fc2")))
    out.update(_ln(src + "output.LayerNorm", dst + ("ln_mlp",)))
  return out


def _shared(path):
  return path[0] in ("image", "embed") or (path[0] == "text_layers" and path[2] in SHARED)


def _layout(m, role, shared):
  """Checkpoint key -> (our path, converter) of the keys this role imports; `shared`:
  whether this role gives the shared weights."""
  if role == "retrieval":
    out = _vision_layout(m)
    out.update(_dense("vision_proj", ("image", "proj")))
    out.update(_text_layout(m, "text_encoder.", "self_attn", "ln_self", True))
    out.update(_dense("text_proj", ("text_proj",)))
    out.update(_dense("itm_head", ("itm_head",)))
  else:
    out = _vision_layout(m)
    out.update(_text_layout(m, "text_decoder.bert.", "causal_attn", "ln_causal", True))
    head = "text_decoder.cls.predictions."
    out.update(_dense(head + "transform.dense", ("lm_head", "transform")))
    out.update(_ln(head + "transform.LayerNorm", ("lm_head", "ln")))
    out[head + "bias"] = (("lm_head", "bias"), _ident)
    if not m.tie_word_embeddings:
      out[head + "decoder.weight"] = (("lm_head", "kernel"), _linear)
  if not shared:
    out = {k: v for k, v in out.items() if not _shared(v[0])}
  return out


def _ignorable(key, value, sd):
  """Keys a checkpoint may hold that carry nothing for us (checked where they could)."""
  if key.endswith("embeddings.position_ids"):
    if not np.array_equal(value.reshape(-1), np.arange(value.size)):
      raise ValueError(f"Checkpoint key {key!r} is not arange: custom positions are not "
                       "supported")
    return True
  if key == "text_decoder.cls.predictions.decoder.bias":
    if not np.array_equal(value, sd.get("text_decoder.cls.predictions.bias")):
      raise ValueError(f"{key!r} differs from 'text_decoder.cls.predictions.bias'; our LM "
                       "head has one bias")
    return True
  if key == "text_decoder.cls.predictions.decoder.weight":
    return _tied(sd)  # untied: mapped (tie_word_embeddings=False)
  return ".pooler." in key  # BlipTextPooler: read by neither ITM nor ITC


def _gather(sd, layout, role):
  out, fused = {}, {}
  for key, (path, convert) in layout.items():
    if key not in sd:
      continue
    value = np.asarray(sd[key], np.float32)
    if isinstance(convert, _Fused):
      f = convert
      if f.bias:
        part = value.reshape(f.heads, f.head_dim)
      else:  # Linear [H*K, D_in] -> [D_in, H, K]
        part = value.reshape(f.heads, f.head_dim, -1).transpose(2, 0, 1)
      fused.setdefault(path, [None] * f.n)[f.slot] = part
      continue
    try:
      out[path] = convert(value)
    except ValueError as e:
      raise ValueError(f"{role} checkpoint key {key!r} of shape {value.shape}: {e}") from e
  for path, parts in fused.items():
    out[path] = np.stack(parts, axis=-3)  # [D, n, H, K] kernels, [n, H, K] biases
  return out


def blip_params(checkpoints, config_model, shared_from="retrieval", base_params=None, seed=0):
  """Our Blip parameters from {"retrieval": (config, sd), "caption": (config, sd)} (either
  or both); see the module docstring. Returns nested dicts of float32 numpy arrays in the
  layout of `family.init` after nn.meta.unbox (scan: layers stacked under text_layers/layers
  and image/tower/encoder/blocks)."""
  m = config_lib.base_config().model
  m.update(dict(config_model))
  if m.name != "blip":
    raise ValueError(f"Config field 'model.name' is {m.name!r}; HF BLIP imports into 'blip'")
  if shared_from not in ("retrieval", "caption"):
    raise ValueError(f"shared_from={shared_from!r}: retrieval or caption")
  if shared_from not in checkpoints:
    shared_from = next(iter(checkpoints))
  want = hf_config(checkpoints=checkpoints, context_length=m.context_length)
  for field, value in want.items():
    if field in ("name",):
      continue
    if field.endswith("mlp_ratio"):
      ok = np.isclose(m[field], value)
    else:
      ok = m[field] == value
    if not ok:
      raise ValueError(f"Config field 'model.{field}' is {m[field]!r}; the checkpoint needs "
                       f"{value!r} (config.model.update(hf_config(...)))")
  flat = {}
  for role, (_, sd) in checkpoints.items():
    layout = _layout(m, role, role == shared_from)
    full = _layout(m, role, True)  # keys of the other role's shared weights are expected too
    missing = sorted(k for k in full if k not in sd)
    unused = sorted(k for k in sd if k not in full and not _ignorable(k, sd[k], sd))
    if missing or unused:
      raise ValueError(f"The {role} checkpoint does not match the config: missing keys "
                       f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unused keys "
                       f"{unused[:8]}{'...' if len(unused) > 8 else ''}")
    flat.update(_gather(sd, layout, role))
  flat[("log_logit_scale",)] = np.float32(np.log(m.logit_scale_init))
  abstract = _flatten(_abstract_params(m))
  expected = {p: tuple(x.shape) for p, x in stacking.unrolled(abstract).items()}
  for path, value in flat.items():
    if path not in expected:
      raise AssertionError(f"import_hf_blip maps to {'/'.join(path)}, which models/blip.py "
                           "does not have")
    if value.shape != expected[path]:
      raise ValueError(f"{'/'.join(path)}: the checkpoint gives shape {value.shape}, the "
                       f"config {expected[path]}")
  absent = sorted(p for p in expected if p not in flat)
  if absent:
    fill = base_params if base_params is not None else _init_params(m, seed)
    fill = stacking.unrolled(_flatten(jax.tree.map(np.asarray, fill)))
    logging.info("import_hf_blip: %d parameters not in the checkpoints, from %s: %s",
                 len(absent), "base_params" if base_params is not None else "initialisation",
                 sorted({"/".join(p[:3]) for p in absent}))
    for p in absent:
      flat[p] = np.asarray(fill[p], np.float32)
  return _to_model_layout(flat, abstract)


def import_blip(retrieval_path=None, caption_path=None, config_model=None,
                shared_from="retrieval", scan=None, base_params=None, seed=0):
  """Our Blip parameters from HF checkpoint directories (either or both). config_model:
  default hf_config(...) over base_config's model; scan overrides config_model.scan."""
  checkpoints = _load(retrieval_path, caption_path)
  m = config_lib.base_config().model
  if config_model is None:
    m.update(hf_config(checkpoints=checkpoints))
  else:
    m.update(dict(config_model))
  if scan is not None:
    m.scan = bool(scan)
  return blip_params(checkpoints, m, shared_from, base_params, seed)


# ---- our tree ------------------------------------------------------------------------------

def _flatten(tree):
  import flax  # pylint: disable=g-import-not-at-top
  return flax.traverse_util.flatten_dict(tree)


def _unflatten(flat):
  import flax  # pylint: disable=g-import-not-at-top
  return flax.traverse_util.unflatten_dict(flat)


def _module(m):
  from vlp_jax.models import blip  # pylint: disable=g-import-not-at-top
  return blip.from_config(m)


def _init_args(m):
  images = jax.ShapeDtypeStruct((1, m.image_size, m.image_size, 3), np.float32)
  tokens = jax.ShapeDtypeStruct((1, m.context_length), np.int32)
  return images, tokens


def _abstract_params(m):
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  module = _module(m)
  return nn.meta.unbox(jax.eval_shape(
      lambda i, t: module.init(jax.random.PRNGKey(0), i, t, method=module.init_all)["params"],
      *_init_args(m)))


def _init_params(m, seed):
  """A fresh initialisation, for what the checkpoints leave out. The "rbg" generator
  compiles ~3x faster on CPU than threefry (whose stream the families' init uses): these
  parameters are to be trained, not compared."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  module = _module(m)
  images, tokens = _init_args(m)
  return nn.meta.unbox(jax.jit(
      lambda: module.init(jax.random.key(seed, impl="rbg"), np.zeros(images.shape, np.float32),
                          np.ones(tokens.shape, np.int32), method=module.init_all)["params"])())


def _to_model_layout(flat, abstract):
  """Unrolled `flat` stacked where the model scans (models/stacking.py), as nested dicts."""
  got = stacking.to_layout(flat, abstract)
  diff = sorted(set(abstract) - set(got)) or sorted(
      p for p in got if tuple(got[p].shape) != tuple(abstract[p].shape))
  if diff:
    raise AssertionError(f"import_hf_blip no longer matches models/blip.py at "
                         f"{['/'.join(p) for p in diff[:5]]}")
  return _unflatten(got)


# ---- command line ----------------------------------------------------------------------------

def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--retrieval", help="BlipForImageTextRetrieval checkpoint directory")
  parser.add_argument("--caption", help="BlipForConditionalGeneration checkpoint directory")
  parser.add_argument("--shared_from", default="retrieval", choices=("retrieval", "caption"))
  parser.add_argument("--context_length", type=int, default=0)
  parser.add_argument("--scan", action="store_true", help="stack layers (model.scan)")
  parser.add_argument("--out", required=True, help=".npz of '/'-joined parameter paths")
  args = parser.parse_args(argv)
  checkpoints = _load(args.retrieval, args.caption)
  m = config_lib.base_config().model
  m.update(hf_config(checkpoints=checkpoints, context_length=args.context_length or None))
  m.scan = args.scan
  params = blip_params(checkpoints, m, args.shared_from)
  np.savez(args.out, **{"/".join(p): v for p, v in _flatten(params).items()})
  fields = {k: m[k] for k in hf_config(checkpoints=checkpoints,
                                       context_length=m.context_length)}
  print(json.dumps({"out": args.out, "config.model": fields}))


if __name__ == "__main__":
  main()
