"""Imports Hugging Face GPT-2 and OPT causal LMs as parameters of our `DecoderLM`.

  config, sd = load_checkpoint(HF_DIR)           # config.json + model.safetensors (or .bin)
  config.model.update(hf_config(config))         # vocab_size and the model.lm group
  params = lm_params(sd, config.model)           # nested dicts of float32 numpy arrays

  python -m vlp_jax.models.import_hf_lm --hf=HF_DIR --out=WORKDIR [--scan] [--positions=N]

The command line writes a weights-only workdir for `model.init_from=WORKDIR`: an orbax
checkpoint at WORKDIR/checkpoints/0 whose "state" item is {"params": {"lm": params}} (the
LM family keeps its DecoderLM under "lm"), the HF tokenizer files in WORKDIR/tokenizer/
(data/bpe.py reads them), and the config overrides it prints in WORKDIR/import_config.json.

Ids: ours are HF's + 1, our 0 being padding (data/bpe.py). The token embedding gets a zero
row in front (model.vocab_size = HF vocab + 1), so our logits at id k + 1 are HF's at k and
the padding logit is 0; feed our model HF ids + 1.

Where each of our parameters comes from (GPT-2 keys under `transformer.`, OPT's under
`model.decoder.`; checkpoints of the bare GPT2Model / OPTModel lack the first part):
  token_embedding        wte / embed_tokens          (zero row prepended)
  pos_embedding          wpe / embed_positions       (OPT's two offset rows kept in front)
  decoder/block_i/ln_attn, ln_mlp        ln_1, ln_2 / self_attn_layer_norm, final_layer_norm
  decoder/block_i/attn   attn.c_attn, c_proj / self_attn.{q,k,v,out}_proj
  decoder/block_i/mlp    mlp.c_fc, c_proj / fc1, fc2
  ln_final               ln_f / final_layer_norm
  head (untied only)     lm_head                     (zero column prepended)
GPT-2's Conv1D weights are [in, out] (our kernels already), OPT's Linears [out, in].
Buffers (GPT-2's attn.bias / attn.masked_bias) and a tied lm_head equal to the embedding are
ignored; any other key, or a missing one, is a ValueError naming it. The weights fix every
size but the number of heads and the activation: lm_params takes those from the config
(hf_config reads them from config.json).

Refused (one line naming the field): OPT without do_layer_norm_before (post-LN, OPT-350m)
or with word_embed_proj_dim != hidden_size, biases or LayerNorm affine off, LayerNorm
epsilons other than our 1e-5, GPT-2 attention variants (scale_attn_weights off,
scale_attn_by_inverse_layer_idx, cross-attention), activations we lack.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

from vlp_jax import config_lib
from vlp_jax.models import import_hf_blip
from vlp_jax.models import stacking
from vlp_jax.train import weights_dir

EPS = 1e-5  # layers.layer_norm's default, which DecoderLM uses
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
               "relu": "relu", "quick_gelu": "quick_gelu"}
OPT_OFFSET = 2  # OPTLearnedPositionalEmbedding reads row position + 2
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "config.json")
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # GPT-2's causal-mask buffers

# HF's defaults, for config.json files that leave them out (save_pretrained drops some).
_GPT2 = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
             n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
             scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
             add_cross_attention=False, tie_word_embeddings=True)
_OPT = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
            num_attention_heads=12, max_position_embeddings=2048, activation_function="relu",
            do_layer_norm_before=True, word_embed_proj_dim=None, enable_bias=True,
            layer_norm_elementwise_affine=True, tie_word_embeddings=True)


def load_checkpoint(path):
  """(HF config dict, {key: float32 numpy}) of a HF folder (config.json and
  model.safetensors, a sharded index, or pytorch_model.bin when torch is installed)."""
  return import_hf_blip.load_checkpoint(path)


# ---- config ------------------------------------------------------------------------------------

def hf_config(hf_config_or_dict):
  """Our `config.model` fields a GPT2Config / OPTConfig (or its dict) fixes:
  {"vocab_size": HF vocab + 1, "lm": {width, depth, heads, mlp_ratio, activation,
  positions, position_offset, tied}}, for config.model.update(...)."""
  c = hf_config_or_dict
  c = dict(c.to_dict() if hasattr(c, "to_dict") else c)
  kind = c.get("model_type")
  if kind == "gpt2":
    c = {**_GPT2, **c}
    for field, ok in (("scale_attn_weights", c["scale_attn_weights"]),
                      ("scale_attn_by_inverse_layer_idx", not c["scale_attn_by_inverse_layer_idx"]),
                      ("add_cross_attention", not c["add_cross_attention"])):
      if not ok:
        raise ValueError(f"GPT-2 config field {field}={c[field]!r}: our attention is GPT-2's "
                         "default (scaled by head_dim**-0.5, no cross-attention)")
    width, eps = c["n_embd"], c["layer_norm_epsilon"]
    mlp = c["n_inner"] or 4 * width
    lm = dict(width=width, depth=c["n_layer"], heads=c["n_head"], positions=c["n_positions"],
              position_offset=0)
  elif kind == "opt":
    c = {**_OPT, **c}
    width, eps = c["hidden_size"], EPS  # OPT's LayerNorms are torch's default, 1e-5
    if not c["do_layer_norm_before"]:
      raise ValueError("OPT config field do_layer_norm_before=False: a post-LayerNorm model "
                       "(OPT-350m); our DecoderLM is pre-LayerNorm")
    if c["word_embed_proj_dim"] not in (None, width):
      raise ValueError(f"OPT config field word_embed_proj_dim={c['word_embed_proj_dim']} "
                       f"differs from hidden_size={width} (project_in/out, OPT-350m): not "
                       "supported")
    for field in ("enable_bias", "layer_norm_elementwise_affine"):
      if not c[field]:
        raise ValueError(f"OPT config field {field}=False: our layers have biases and "
                         "affine LayerNorms")
    mlp = c["ffn_dim"]
    lm = dict(width=width, depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
              positions=c["max_position_embeddings"], position_offset=OPT_OFFSET)
  else:
    raise ValueError(f"config.json model_type={kind!r}: only 'gpt2' and 'opt' import")
  if not np.isclose(eps, EPS, rtol=1e-6):
    raise ValueError(f"Config field layer_norm_epsilon={eps}: our DecoderLM's LayerNorms use "
                     f"{EPS}")
  act = c["activation_function"]
  if act not in ACTIVATIONS:
    raise ValueError(f"Config field activation_function={act!r}: not one of "
                     f"{sorted(ACTIVATIONS)}")
  if width % lm["heads"]:
    raise ValueError(f"Config: width {width} is not divisible by {lm['heads']} heads")
  ratio = mlp / width
  if int(width * ratio) != mlp:  # language_model.from_config's rounding
    raise ValueError(f"model.lm.mlp_ratio={ratio} does not give the checkpoint's MLP width "
                     f"{mlp} from width {width}")
  lm.update(mlp_ratio=ratio, activation=ACTIVATIONS[act], tied=bool(c["tie_word_embeddings"]))
  return dict(vocab_size=c["vocab_size"] + 1, lm=lm)


def overrides(fields, scan=False):
  """--config.model... flags of hf_config's fields (and model.scan, which fixes the layout)."""
  flat = [("vocab_size", fields["vocab_size"])]
  flat += [(f"lm.{k}", v) for k, v in fields["lm"].items()]
  flat.append(("scan", bool(scan)))
  return [f"--config.model.{k}={v}" for k, v in flat]


def _model_config(config_model):
  m = config_lib.base_config().model
  m.update(dict(config_model))
  return m


# ---- the mapping -------------------------------------------------------------------------------

def _ident(x):
  return x


def _ln(src, dst):
  return {src + ".weight": (dst + ("scale",), _ident), src + ".bias": (dst + ("bias",), _ident)}


def _family(sd):
  """("gpt2" or "opt", key prefix) from the embedding's key."""
  for kind, prefix, key in (("gpt2", "transformer.", "wte.weight"), ("gpt2", "", "wte.weight"),
                            ("opt", "model.decoder.", "embed_tokens.weight"),
                            ("opt", "decoder.", "embed_tokens.weight")):
    if prefix + key in sd:
      return kind, prefix
  raise ValueError("Checkpoint has neither 'transformer.wte.weight' (GPT-2) nor "
                   "'model.decoder.embed_tokens.weight' (OPT)")


def _layout(kind, p, m):
  """checkpoint key -> (our unrolled path, converter); a path ending in a slot number is one
  of q, k, v, stacked into the fused kernel afterwards."""
  w, h = m.lm.width, m.lm.heads
  k = w // h
  rows = m.lm.positions + m.lm.position_offset
  embed = lambda x: np.concatenate([np.zeros((1,) + x.shape[1:], x.dtype), x])
  head = lambda x: np.concatenate([np.zeros((x.shape[1], 1), x.dtype), x.T], axis=1)
  out_kernel = lambda x: x.reshape(h, k, w)  # rows: the heads' outputs, concatenated
  if kind == "gpt2":
    out = {p + "wte.weight": (("token_embedding",), embed),
           p + "wpe.weight": (("pos_embedding",), lambda x: x[:rows])}
    out.update(_ln(p + "ln_f", ("ln_final",)))
    for i in range(m.lm.depth):
      src, dst = f"{p}h.{i}.", ("decoder", f"block_{i}")
      out.update(_ln(src + "ln_1", dst + ("ln_attn",)))
      out.update(_ln(src + "ln_2", dst + ("ln_mlp",)))
      out.update({
          # c_attn columns: q, k, v blocks of W, each heads x head_dim.
          src + "attn.c_attn.weight": (dst + ("attn", "qkv_kernel"),
                                       lambda x: x.reshape(w, 3, h, k)),
          src + "attn.c_attn.bias": (dst + ("attn", "qkv_bias"), lambda x: x.reshape(3, h, k)),
          src + "attn.c_proj.weight": (dst + ("attn", "out_kernel"), out_kernel),
          src + "attn.c_proj.bias": (dst + ("attn", "out_bias"), _ident),
          src + "mlp.c_fc.weight": (dst + ("mlp", "fc1", "kernel"), _ident),
          src + "mlp.c_fc.bias": (dst + ("mlp", "fc1", "bias"), _ident),
          src + "mlp.c_proj.weight": (dst + ("mlp", "fc2", "kernel"), _ident),
          src + "mlp.c_proj.bias": (dst + ("mlp", "fc2", "bias"), _ident),
      })
  else:
    out = {p + "embed_tokens.weight": (("token_embedding",), embed),
           p + "embed_positions.weight": (("pos_embedding",), lambda x: x[:rows])}
    out.update(_ln(p + "final_layer_norm", ("ln_final",)))
    for i in range(m.lm.depth):
      src, dst = f"{p}layers.{i}.", ("decoder", f"block_{i}")
      att = src + "self_attn."
      out.update(_ln(src + "self_attn_layer_norm", dst + ("ln_attn",)))
      out.update(_ln(src + "final_layer_norm", dst + ("ln_mlp",)))
      for slot, name in enumerate("qkv"):
        out[f"{att}{name}_proj.weight"] = (dst + ("attn", "qkv_kernel", slot),
                                           lambda x: x.T.reshape(w, h, k))
        out[f"{att}{name}_proj.bias"] = (dst + ("attn", "qkv_bias", slot),
                                         lambda x: x.reshape(h, k))
      out.update({
          att + "out_proj.weight": (dst + ("attn", "out_kernel"), lambda x: out_kernel(x.T)),
          att + "out_proj.bias": (dst + ("attn", "out_bias"), _ident),
          src + "fc1.weight": (dst + ("mlp", "fc1", "kernel"), lambda x: x.T),
          src + "fc1.bias": (dst + ("mlp", "fc1", "bias"), _ident),
          src + "fc2.weight": (dst + ("mlp", "fc2", "kernel"), lambda x: x.T),
          src + "fc2.bias": (dst + ("mlp", "fc2", "bias"), _ident),
      })
  if not m.lm.tied:
    out["lm_head.weight"] = (("head",), head)
  return out


def _embedding_key(kind, p):
  return p + ("wte.weight" if kind == "gpt2" else "embed_tokens.weight")


def _check_shapes(sd, kind, p, m):
  """The sizes the weights show against the config, each mismatch naming its field."""
  emb = sd[_embedding_key(kind, p)]
  pos_key = p + ("wpe.weight" if kind == "gpt2" else "embed_positions.weight")
  fc1 = f"{p}h.0.mlp.c_fc.weight" if kind == "gpt2" else f"{p}layers.0.fc1.weight"
  offset = 0 if kind == "gpt2" else OPT_OFFSET
  layer = f"{p}h." if kind == "gpt2" else f"{p}layers."
  depth = len({key[len(layer):].split(".")[0] for key in sd if key.startswith(layer)})
  checks = [("model.vocab_size", m.vocab_size, emb.shape[0] + 1),
            ("model.lm.width", m.lm.width, emb.shape[1]),
            ("model.lm.depth", m.lm.depth, depth),
            ("model.lm.position_offset", m.lm.position_offset, offset)]
  if fc1 in sd:
    mlp = sd[fc1].shape[1 if kind == "gpt2" else 0]
    checks.append(("model.lm.mlp_ratio", int(m.lm.width * m.lm.mlp_ratio), mlp))
  for field, got, want in checks:
    if got != want:
      raise ValueError(f"Config field {field!r} gives {got}; the checkpoint needs {want} "
                       "(config.model.update(hf_config(...)))")
  if pos_key in sd and m.lm.positions + offset > sd[pos_key].shape[0]:
    raise ValueError(f"Config field 'model.lm.positions' is {m.lm.positions}; {pos_key!r} has "
                     f"only {sd[pos_key].shape[0] - offset} positions")
  if m.lm.width % m.lm.heads:
    raise ValueError(f"Config field 'model.lm.heads': width {m.lm.width} is not divisible by "
                     f"{m.lm.heads}")


def _ignorable(key, sd, kind, p, m):
  """Keys that carry nothing for us: mask buffers, a tied head equal to the embedding."""
  if kind == "gpt2" and key.endswith(IGNORED_BUFFERS):
    return True
  if key == "lm_head.weight" and m.lm.tied:
    if not np.array_equal(sd[key], sd[_embedding_key(kind, p)]):
      raise ValueError(f"Checkpoint key 'lm_head.weight' differs from "
                       f"{_embedding_key(kind, p)!r} but model.lm.tied=True: set "
                       "model.lm.tied=False (hf_config reads tie_word_embeddings)")
    return True
  return False


def lm_params(state_dict, config_model):
  """Our DecoderLM parameters (nested dicts of float32 numpy arrays, the layout of
  DecoderLM.init after nn.meta.unbox: layers stacked under decoder/blocks when
  config_model.scan) from a GPT-2 or OPT state dict. config_model: config.model, or a
  dict of its fields (hf_config's, plus scan) over base_config's."""
  m = _model_config(config_model)
  sd = state_dict
  kind, p = _family(sd)
  _check_shapes(sd, kind, p, m)
  layout = _layout(kind, p, m)
  missing = sorted(k for k in layout if k not in sd)
  unknown = sorted(k for k in sd if k not in layout and not _ignorable(k, sd, kind, p, m))
  for what, keys in (("unknown", unknown), ("missing", missing)):
    if keys:
      more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
      raise ValueError(f"{kind} checkpoint: {what} key{'s' * (len(keys) > 1)} "
                       f"{', '.join(repr(k) for k in keys[:4])}{more}")
  expected = {path: tuple(x.shape) for path, x in _flatten(_abstract_params(m, False)).items()}
  flat, fused = {}, {}
  for key, (path, convert) in layout.items():
    value = np.asarray(sd[key], np.float32)
    try:
      value = convert(value)
    except ValueError as e:
      raise ValueError(f"Checkpoint key {key!r} of shape {value.shape}: {e}") from e
    if isinstance(path[-1], int):
      fused.setdefault(path[:-1], [None] * 3)[path[-1]] = value
    else:
      flat[path] = value
  flat.update({path: np.stack(parts, axis=-3) for path, parts in fused.items()})
  for path, value in flat.items():
    if path not in expected:
      raise AssertionError(f"import_hf_lm maps to {'/'.join(path)}, which DecoderLM lacks")
    if value.shape != expected[path]:
      raise ValueError(f"{'/'.join(path)}: the checkpoint gives shape {value.shape}, the "
                       f"config {expected[path]}")
  absent = sorted(set(expected) - set(flat))
  if absent:
    raise AssertionError(f"import_hf_lm gives no {['/'.join(a) for a in absent[:4]]}")
  return _unflatten(stacking.to_layout(flat, _flatten(_abstract_params(m))))


# ---- our tree ----------------------------------------------------------------------------------

def _flatten(tree):
  import flax  # pylint: disable=g-import-not-at-top
  return flax.traverse_util.flatten_dict(tree)


def _unflatten(flat):
  import flax  # pylint: disable=g-import-not-at-top
  return flax.traverse_util.unflatten_dict(flat)


def _abstract_params(m, scan=None):
  """DecoderLM's parameter shapes for config.model `m` (scan: default m.scan)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from vlp_jax.models import language_model  # pylint: disable=g-import-not-at-top
  m = _model_config(m)
  if scan is not None:
    m.scan = scan
  module = language_model.from_config(m)
  tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
  return nn.meta.unbox(jax.eval_shape(
      lambda t: module.init(jax.random.PRNGKey(0), t, 0)["params"], tokens))


# ---- command line ------------------------------------------------------------------------------

def write_workdir(out, params, fields, scan, hf_dir):
  """The weights-only workdir `model.init_from` reads (see the module docstring)."""
  out = weights_dir.write(out, {"lm": params})
  copied = []
  os.makedirs(os.path.join(out, "tokenizer"))
  for name in TOKENIZER_FILES:
    src = os.path.join(hf_dir, name)
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(out, "tokenizer", name))
      copied.append(name)
  flags = overrides(fields, scan) + [f"--config.model.init_from={out}"]
  if {"vocab.json", "merges.txt"} <= set(copied):  # a run reads its own workdir's otherwise
    flags.append(f"--config.data.tokenizer={os.path.join(out, 'tokenizer')}")
  summary = {"out": out, "hf": os.path.abspath(hf_dir), "config.model": dict(fields, scan=scan),
             "overrides": flags, "tokenizer": copied}
  with open(os.path.join(out, "import_config.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def run(hf_dir, out, scan=False, positions=0):
  """Imports HF_DIR into a new workdir `out`; returns the summary written beside it."""
  weights_dir.refuse_existing(out)
  if not os.path.isdir(hf_dir):
    raise ValueError(f"--hf={hf_dir} is not a directory")
  config, sd = load_checkpoint(hf_dir)
  fields = hf_config(config)
  if positions:
    if positions > fields["lm"]["positions"]:
      raise ValueError(f"--positions={positions} exceeds the checkpoint's "
                       f"{fields['lm']['positions']}")
    fields["lm"]["positions"] = positions
  params = lm_params(sd, dict(fields, scan=scan))
  return write_workdir(out, params, fields, scan, hf_dir)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--hf", required=True, help="HF folder: config.json + weights")
  parser.add_argument("--out", required=True, help="new workdir for model.init_from")
  parser.add_argument("--scan", action="store_true", help="stack layers (model.scan)")
  parser.add_argument("--positions", type=int, default=0,
                      help="keep this many positions (default: all of the checkpoint's)")
  args = parser.parse_args(argv)
  try:
    summary = run(args.hf, args.out, args.scan, args.positions)
  except ValueError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  if not {"vocab.json", "merges.txt"} <= set(summary["tokenizer"]):
    print(f"note: {args.hf} has no vocab.json / merges.txt: {args.out}/tokenizer cannot "
          "tokenize; set config.data.tokenizer to the model's vocab.json + merges.txt folder",
          file=sys.stderr)
  print(" ".join(summary["overrides"]))
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
