"""BLIP-2 stage 2 in PyTorch: transformers' `Blip2ForConditionalGeneration` over an OPT
decoder at our config's sizes, our weights copied in where the layouts correspond; the
reference side of bench/compare_blip2.py. Numpy and torch only (no jax): the timed worker's
RSS is torch's own.

What maps (ours -> transformers), by `hf_weights`:
  image_tower (frozen)   vision_model.embeddings / encoder.layers.i (EVA layout: layer_norm1,
                         fused qkv with a bias, projection, layer_norm2, mlp)
  ln_vision (trained)    vision_model.post_layernorm (LAVIS's ln_vision, as HF converts it)
  qformer                query_tokens, qformer.layernorm (ln_query), encoder.layer.i
                         attention / crossattention (query, key, value, output.dense +
                         LayerNorm), intermediate_query / output_query (query MLP)
  lm_proj                language_projection
  lm (frozen)            language_model.model.decoder (embed_tokens, embed_positions with
                         OPT's two offset rows, layers.i, final_layer_norm); lm_head tied
What does not: our tower is CLIP-layout, a bias-free patch projection and `ln_pre` after the
positions; HF's BLIP-2 vision is EVA-layout, a patch bias (set to zero here) and no LayerNorm
there. So the two image towers compute different functions unless ln_pre is added to HF's
embeddings (`add_ln_pre`, a forward hook, parity checks only; the timed model runs without
it, ~0.1% of the step's FLOPs). Everything after the tower maps exactly.

Token ids are ours on both sides (the embedding is copied as is): HF's input is
[IMAGE] * num_queries (the placeholders BLIP-2 scatters the projected queries into), then
[EOS, t_1, ..., t_{L-1}] as our DecoderLM reads; labels are the input with the
placeholders, the start symbol and padding at -100 (HF shifts them by one).
"""
import numpy as np

PAD, EOS = 0, 2  # vlp_jax.data.tokenizer's ids (the family starts captions with EOS)
IMAGE = 1  # HF's image placeholder id: any id no caption holds


def hf_config(m):
  """transformers.Blip2Config of our config.model (blip2_lm, OPT-style LM)."""
  import transformers
  lm = m.lm
  if lm.position_offset != 2 or lm.activation != "relu" or not lm.tied:
    raise ValueError("OPT needs model.lm.position_offset=2, activation='relu', tied=True")
  act = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu",
         "relu": "relu"}[m.activation]
  vision = transformers.Blip2VisionConfig(
      hidden_size=m.vision_width, intermediate_size=int(m.vision_width * m.vision_mlp_ratio),
      num_hidden_layers=m.vision_depth + m.vision_feature_layer + 1,
      num_attention_heads=m.vision_heads, image_size=m.image_size, patch_size=m.patch_size,
      hidden_act=act, layer_norm_eps=1e-5, attention_dropout=0.0, qkv_bias=True)
  qformer = transformers.Blip2QFormerConfig(
      vocab_size=m.vocab_size, hidden_size=m.text_width, num_hidden_layers=m.text_depth,
      num_attention_heads=m.text_heads, intermediate_size=int(m.text_width * m.text_mlp_ratio),
      hidden_act=act, hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=0.0,
      layer_norm_eps=1e-12, cross_attention_frequency=m.cross_attention_every,
      encoder_hidden_size=m.vision_width, use_qformer_text_input=False)
  text = transformers.OPTConfig(
      vocab_size=m.vocab_size, hidden_size=lm.width, num_hidden_layers=lm.depth,
      ffn_dim=int(lm.width * lm.mlp_ratio), num_attention_heads=lm.heads,
      max_position_embeddings=lm.positions, do_layer_norm_before=True,
      word_embed_proj_dim=lm.width, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
      layerdrop=0.0, activation_function="relu", pad_token_id=PAD, bos_token_id=EOS,
      eos_token_id=EOS, enable_bias=True, tie_word_embeddings=True)
  return transformers.Blip2Config(vision_config=vision, qformer_config=qformer,
                                  text_config=text, num_query_tokens=m.num_queries,
                                  image_token_index=IMAGE)


def _linear(kernel):
  """Our kernel [in, (n,) heads, head_dim] or [in, out] -> torch weight [out, in]."""
  return kernel.reshape(kernel.shape[0], -1).T


def _attention(p, out, prefix, names):
  """Our fused attention `p` into HF's separate projections `names` (q/k/v order)."""
  fused = [(k, v) for k, v in (("qkv", 3), ("q", 1), ("kv", 2)) if f"{k}_kernel" in p]
  parts = [(p[f"{k}_kernel"][:, i], p[f"{k}_bias"][i]) for k, n in fused for i in range(n)]
  for name, (kernel, bias) in zip(names, parts):
    out[f"{prefix}{name}.weight"], out[f"{prefix}{name}.bias"] = _linear(kernel), bias.reshape(-1)


def hf_weights(params, m):
  """{HF state_dict key: numpy array} of our blip2_lm params (nested dicts, unrolled)."""
  out = {}
  t = params["image_tower"]
  v = "vision_model."
  w = m.vision_width
  out[v + "embeddings.class_embedding"] = t["cls"].reshape(1, 1, w)
  out[v + "embeddings.patch_embedding.weight"] = t["patch_embed"]["kernel"].transpose(3, 2, 0, 1)
  out[v + "embeddings.patch_embedding.bias"] = np.zeros((w,), np.float32)  # ours has none
  out[v + "embeddings.position_embedding"] = t["pos_embedding"][None]
  for i, blk in enumerate(_blocks(t["encoder"])):
    e = f"{v}encoder.layers.{i}."
    _norm(out, e + "layer_norm1", blk["ln_attn"])
    _norm(out, e + "layer_norm2", blk["ln_mlp"])
    a = blk["attn"]
    out[e + "self_attn.qkv.weight"] = _linear(a["qkv_kernel"])
    out[e + "self_attn.qkv.bias"] = a["qkv_bias"].reshape(-1)
    _out(out, e + "self_attn.projection", a)
    _dense(out, e + "mlp.fc1", blk["mlp"]["fc1"])
    _dense(out, e + "mlp.fc2", blk["mlp"]["fc2"])
  _norm(out, v + "post_layernorm", params["ln_vision"])

  q = params["qformer"]
  out["query_tokens"] = q["query_tokens"][None]
  _norm(out, "qformer.layernorm", q["ln_query"])
  for i in range(m.text_depth):
    layer, e = q[f"layer_{i}"], f"qformer.encoder.layer.{i}."
    for ours, hf, ln in (("self_attn", "attention", "ln_self"),
                         ("cross_attn", "crossattention", "ln_cross")):
      if ours not in layer:
        continue
      _attention(layer[ours], out, f"{e}{hf}.attention.", ("query", "key", "value"))
      _out(out, f"{e}{hf}.output.dense", layer[ours])
      _norm(out, f"{e}{hf}.output.LayerNorm", layer[ln])
    _dense(out, e + "intermediate_query.dense", layer["query_mlp"]["fc1"])
    _dense(out, e + "output_query.dense", layer["query_mlp"]["fc2"])
    _norm(out, e + "output_query.LayerNorm", layer["ln_query_mlp"])
  _dense(out, "language_projection", params["lm_proj"])

  lm, d = params["lm"], "language_model.model.decoder."
  out[d + "embed_tokens.weight"] = lm["token_embedding"]
  out[d + "embed_positions.weight"] = lm["pos_embedding"]  # OPT's 2 offset rows included
  for i, blk in enumerate(_blocks(lm["decoder"])):
    e = f"{d}layers.{i}."
    _norm(out, e + "self_attn_layer_norm", blk["ln_attn"])
    _norm(out, e + "final_layer_norm", blk["ln_mlp"])
    _attention(blk["attn"], out, e + "self_attn.", ("q_proj", "k_proj", "v_proj"))
    _out(out, e + "self_attn.out_proj", blk["attn"])
    _dense(out, e + "fc1", blk["mlp"]["fc1"])
    _dense(out, e + "fc2", blk["mlp"]["fc2"])
  _norm(out, d + "final_layer_norm", lm["ln_final"])
  return out


def _blocks(stack):
  n = len([k for k in stack if k.startswith("block_")])
  if not n:
    raise ValueError("unrolled stacks only (model.scan=False)")
  return [stack[f"block_{i}"] for i in range(n)]


def _norm(out, key, p):
  out[key + ".weight"], out[key + ".bias"] = p["scale"], p["bias"]


def _dense(out, key, p):
  out[key + ".weight"], out[key + ".bias"] = p["kernel"].T, p["bias"]


def _out(out, key, p):
  """Our attention output [heads, head_dim, width] -> torch [width, heads * head_dim]."""
  kernel = p["out_kernel"]
  out[key + ".weight"] = kernel.reshape(-1, kernel.shape[-1]).T
  out[key + ".bias"] = p["out_bias"]


def load(model, weights):
  """Copies `weights` (hf_weights) into `model`; every parameter must be covered but the
  tied lm_head."""
  import torch
  state = model.state_dict()
  left = set(state) - set(weights) - {"language_model.lm_head.weight"}
  extra = set(weights) - set(state)
  if left or extra:
    raise ValueError(f"unmapped HF keys {sorted(left)}, unknown keys {sorted(extra)}")
  with torch.no_grad():
    for key, value in weights.items():
      if tuple(state[key].shape) != value.shape:
        raise ValueError(f"{key}: HF {tuple(state[key].shape)} vs ours {value.shape}")
      state[key].copy_(torch.from_numpy(np.array(value, np.float32)))


def freeze(model):
  """Frozen as ours (families/soft_prompt.py FROZEN): the image tower and the LM; the
  post_layernorm (our ln_vision) stays trained."""
  for name, p in model.named_parameters():
    tower = name.startswith("vision_model.") and not name.startswith("vision_model.post_layernorm")
    p.requires_grad = not (tower or name.startswith("language_model."))


def add_ln_pre(model, scale, bias, eps=1e-5):
  """Our CLIP tower's ln_pre after HF's vision embeddings (a forward hook): parity only."""
  import torch
  weight, b = torch.from_numpy(np.asarray(scale)), torch.from_numpy(np.asarray(bias))
  return model.vision_model.embeddings.register_forward_hook(
      lambda mod, args, out: torch.nn.functional.layer_norm(out, out.shape[-1:], weight, b, eps))


def build(m, params=None, seed=0):
  """Blip2ForConditionalGeneration at our sizes, our `params` copied in (or HF's random
  init), frozen as ours."""
  import torch
  import transformers
  torch.manual_seed(seed)
  model = transformers.Blip2ForConditionalGeneration(hf_config(m))
  if params is not None:
    load(model, hf_weights(params, m))
  freeze(model)
  return model


def inputs(images, tokens, num_queries, mask=False):
  """HF's inputs of our batch (images NHWC, tokens [pieces, EOS, 0...] whose last column is
  padding): pixel_values, input_ids = placeholders + [EOS, tokens[:-1]], labels over the
  whole input (-100 on the placeholders, on EOS, which the last query would otherwise
  predict, and on padding; labels of the text alone make HF slice float32 logits that its
  loss then .view()s, which fails). `mask`: also the padding attention_mask; without it
  the loss is the same (padding only follows the caption, under a causal mask, and
  positions count alike)."""
  import torch
  if np.any(tokens[:, -1] != PAD):
    raise ValueError("the last caption column must be padding (HF reads L positions)")
  b = tokens.shape[0]
  text = np.concatenate([np.full((b, 1), EOS, tokens.dtype), tokens[:, :-1]], 1)
  ids = np.concatenate([np.full((b, num_queries), IMAGE, tokens.dtype), text], 1)
  labels = np.where((ids == PAD) | (ids == IMAGE), -100, ids)
  labels[:, num_queries] = -100  # the start symbol is not a target
  out = {"pixel_values": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
         "input_ids": torch.from_numpy(ids).long(),
         "labels": torch.from_numpy(labels).long()}
  if mask:
    out["attention_mask"] = torch.from_numpy((ids != PAD).astype(np.int64))
  return out


def optimizer(model, o, foreach):
  """AdamW as ours (train/optimizer.py): trained parameters only, weight decay on matrices
  (not on query_tokens, norms, biases), our lr / betas / eps."""
  import torch
  trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  decay = [p for n, p in trained if p.ndim >= 2 and n != "query_tokens"]
  ids = {id(p) for p in decay}
  no_decay = [p for _, p in trained if id(p) not in ids]
  return torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                            {"params": decay, "weight_decay": o.weight_decay}],
                           lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, foreach=foreach)
