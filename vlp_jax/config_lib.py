"""Shared config defaults, variant-argument parsing and start-up validation.

Every config file builds on `base_config()` and changes only what differs, so the set of
fields is known in one place: a field that is not here is a typo, and `validate` rejects it
before anything is compiled.
"""
import json
import math

import ml_collections

ConfigDict = ml_collections.ConfigDict

CONTRASTIVE_IMPLS = ("allgather", "ring")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("full", "dots", "dots_and_attention")  # models/layers.py REMAT_POLICIES
SCHEDULES = ("cosine", "constant")
AUGMENTS = ("none", "crop")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu")  # models/layers.py activation_fn
DECODE_METHODS = ("greedy", "beam", "sample")
NONFINITE = ("stop", "skip")
WEIGHT_DECAY_MODES = ("decoupled", "lr_coupled")  # train/optimizer.py
EVAL_RESIZES = ("crop", "squash")
BCE_REDUCTIONS = ("batch_mean", "mean")  # losses/multilabel.py REDUCTIONS
EXPORT_FORMATS = ("vlp", "open_clip")  # train/export.py
EXPORT_DTYPES = ("float32", "bfloat16")


def parse_arg(arg, **defaults):
  """Parses the `path:variant=tiny,scan=True` argument, typed by the defaults (big_vision style)."""
  result = dict(defaults)
  for item in (arg or "").split(","):
    if not item:
      continue
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}")
    if not sep:
      value = "True"
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config argument {key!r} must be true or false, got {value!r}")
      result[key] = value.lower() in ("true", "1")
    else:
      result[key] = kind(value)
  return ml_collections.ConfigDict(result)


def base_config():
  """All fields any run may set, with defaults for a small CPU run."""
  c = ConfigDict()
  c.seed = 0

  c.model = ConfigDict()
  # A registered family (vlp_jax/families): clip, siglip, coca, catlip, albef, blip, mplug,
  # blip2, blip2_lm, prefix_lm, keyword_lm, lm, vqa.
  c.model.name = "clip"
  # Start from other runs' parameters: "WORKDIR[:STEP];..." (default step: the latest).
  c.model.init_from = ""
  # Which of them, one map per run (';'): "this/path:checkpoint/path,..." unrolled path
  # prefixes (block_N, scanned or not); empty: every parameter whose path and shape match.
  c.model.init_from_map = ""
  c.model.dtype = "float32"  # compute dtype; trained parameters are always float32
  # Storage of the family's frozen parameters (Family.frozen): bfloat16 halves their
  # memory; they get no gradient or optimizer state either way.
  c.model.frozen_dtype = "float32"
  c.model.remat = False  # rematerialise each transformer block in backward
  c.model.remat_policy = "full"  # what remat keeps: full | dots | dots_and_attention
  c.model.scan = False  # nn.scan over layers: compile time flat in depth
  c.model.embed_dim = 64  # joint embedding space
  c.model.image_size = 32
  c.model.patch_size = 8
  c.model.vision_width = 64
  c.model.vision_depth = 2
  c.model.vision_heads = 2
  c.model.vision_mlp_ratio = 4.0
  c.model.vocab_size = 256
  c.model.context_length = 16
  c.model.text_width = 64
  c.model.text_depth = 2
  c.model.text_heads = 2
  c.model.text_mlp_ratio = 4.0
  c.model.activation = "gelu"  # gelu (exact), gelu_tanh or quick_gelu (OpenAI CLIP)
  # cls: class token (CLIP); map: attention pooling (SigLIP); none: no class token (CoCa's
  # tower; only for the families that read tokens, BLIP-2 and prefix captioning)
  c.model.image_pool = "cls"
  c.model.text_causal = True
  # eos: at the end-of-text token (CLIP); last: last position (SigLIP); argmax: at the row's
  # largest id (HF CLIP configs with eos_token_id 2, models/import_hf_clip.py)
  c.model.text_pool = "eos"
  # Pieces HF checkpoints have or lack (models/import_hf_clip.py; defaults: OpenAI CLIP's):
  # the epsilon of the CLIP/SigLIP towers' LayerNorms (HF SigLIP: 1e-6), a bias on the
  # patch projection (SigLIP), the LayerNorm before the image encoder (CLIP's ln_pre;
  # SigLIP has none), the image projection (False: the pooled image is the embedding, as
  # HF SigLIP's MAP head output; needs embed_dim == vision_width), a bias on the text
  # projection (SigLIP's text head).
  c.model.layer_norm_eps = 1e-5
  c.model.vision_patch_bias = False
  c.model.vision_pre_norm = True
  c.model.vision_proj = True
  c.model.text_proj_bias = False
  c.model.logit_scale_init = 1 / 0.07  # SigLIP: 10
  c.model.logit_scale_max = 100.0  # 0: no cap (SigLIP)
  c.model.logit_bias_init = -10.0  # SigLIP only
  # CoCa: text_depth unimodal decoder layers, then multimodal_depth with cross-attention to
  # num_decoder_queries image queries (the captioning pooler; 256 in the paper).
  c.model.multimodal_depth = 2
  c.model.num_decoder_queries = 16
  # attention: the paper's two attentional poolers; cls: CLIP's class token is the
  # contrastive embedding and the decoder attends to the patch tokens (open_clip's CoCa
  # without attentional pooling).
  c.model.coca_pooling = "attention"
  # paper: self-attention, cross-attention, MLP; open_clip: self-attention, MLP,
  # cross-attention to LayerNormed image tokens, MLP (open_clip's MultimodalTransformer).
  c.model.multimodal_layer = "paper"
  # ALBEF / BLIP (BERT-style text layers): fusion layers above ALBEF's text_depth text
  # layers; dropout on the text layers' hidden states (BERT: 0.1); the vocabulary head's
  # output projection is the token embedding's transpose (BERT, BLIP) or its own.
  c.model.fusion_depth = 2
  # mPLUG: fusion_n blocks of fusion_s asymmetric co-attention layers (text only) and one
  # connected-attention layer (image and text), then decoder_depth decoder layers.
  c.model.fusion_s = 1
  c.model.fusion_n = 2
  c.model.decoder_depth = 2
  c.model.dropout = 0.0
  c.model.tie_word_embeddings = True
  # The decoder-only language model (models/language_model.py): what model.name='lm'
  # trains, and the frozen LM of BLIP-2 stage 2 and prefix captioning. It shares
  # model.vocab_size; `positions` rows of its position table (>= the soft prompt's length
  # + model.context_length), after `position_offset` unused rows (OPT: 2).
  # BLIP-2 / prefix captioning: the frozen image tower's output layer (-1: last, with its
  # final LayerNorm; -2: BLIP-2's second-to-last, unnormalised); num_queries learned
  # queries (BLIP-2: 32) bridge it to the LM, through a Q-Former of text_* size whose
  # every cross_attention_every-th layer reads the image (BLIP-2: 2), or through
  # mapper_depth pre-LN layers of lm width (prefix captioning).
  c.model.vision_feature_layer = -1
  c.model.num_queries = 32
  c.model.cross_attention_every = 2
  c.model.mapper_depth = 2
  # Keyword prompting: CLIP picks keyword_top_k of num_keywords keywords (data.keywords)
  # whose pieces, num_queries tokens, prompt the LM.
  c.model.num_keywords = 256
  c.model.keyword_top_k = 3
  c.model.lm = ConfigDict()
  c.model.lm.width = 64
  c.model.lm.depth = 2
  c.model.lm.heads = 2
  c.model.lm.mlp_ratio = 4.0
  c.model.lm.activation = "gelu_tanh"  # GPT-2: gelu_tanh; OPT: relu
  c.model.lm.positions = 64
  c.model.lm.position_offset = 0
  c.model.lm.tied = True  # output projection = token embedding's transpose (GPT-2, OPT)

  c.loss = ConfigDict()
  c.loss.contrastive = "allgather"
  c.loss.contrastive_weight = 1.0  # CoCa: loss = contrastive_weight * InfoNCE
  c.loss.caption_weight = 2.0  #   + caption_weight * token-mean captioning cross-entropy
  # CatLIP: sigmoid BCE summed over the labels and averaged over images (batch_mean, as
  # CatLIP's code) or averaged over labels too (mean); pos_weight > 1 counts missed labels more.
  c.loss.bce_reduction = "batch_mean"
  c.loss.pos_weight = 1.0
  # ALBEF / BLIP: loss = itc_weight * ITC + itm_weight * ITM + lm_weight * (MLM or LM).
  c.loss.itc_weight = 1.0
  c.loss.itm_weight = 1.0
  c.loss.lm_weight = 1.0
  c.loss.momentum = 0.995  # EMA of the momentum model
  c.loss.queue_size = 256  # momentum embeddings kept from earlier batches (0: none; >= batch)
  c.loss.distill_alpha = 0.4  # targets: (1 - alpha) one-hot + alpha momentum softmax
  c.loss.distill_ramp_steps = 0  # alpha grows linearly over these first steps (ALBEF: 1 epoch)
  c.loss.mlm_prob = 0.15  # ALBEF: share of caption tokens masked
  c.loss.itc_label_smoothing = 0.1  # BLIP-2's ITC targets (as LAVIS)

  c.data = ConfigDict()
  c.data.train = "builtin:shapes:train"
  c.data.eval = "builtin:shapes:test"  # comma-separated list of dataset specs
  c.data.data_dir = ""  # TFDS data_dir for builtin:/tfds: sets; empty: TFDS default
  # SentencePiece model path, or a GPT-2/OPT tokenizer folder (vocab.json, merges.txt);
  # empty: the workdir's, else one trained on data.train's captions.
  c.data.tokenizer = ""
  c.data.holdout_percent = 10  # jsonl:PATH:test is this share of records (by key hash)
  c.data.shuffle_buffer = 10_000  # wds:/tfds: per-host buffer; jsonl:/builtin: global shuffle (1: source order)
  c.data.augment = "none"  # none: resize; crop: random resized crop (no flip: captions say left/right)
  c.data.crop_min_scale = 0.6
  c.data.num_parallel_calls = -1  # -1: one per CPU core
  c.data.prefetch = 2  # batches placed on the devices ahead of the step
  c.data.shard_cycle = 4  # wds: shards read at once, interleaved; each is held in memory whole
  c.data.image_key = ""  # tfds: image feature; empty: the first Image feature
  c.data.text_key = ""  # tfds: text feature path (e.g. captions/text); empty: the first Text
  c.data.label_key = ""  # tfds: class label feature; empty: the first ClassLabel
  c.data.zeroshot_templates = "short"  # prompts of tfds/jsonl zero-shot sets: short or clip80
  # Eval images: crop = resize the shorter side, centre crop (CLIP's protocol); squash =
  # resize to a square, ignoring the aspect ratio.
  c.data.eval_resize = "crop"
  c.data.allow_outside_paths = False  # jsonl: image paths may leave their folder
  # CatLIP: the synset vocabulary file; empty: WORKDIR/synsets.txt, built from data.train's
  # captions with the synsets that at least synset_min_count captions name.
  c.data.synsets = ""
  c.data.synset_min_count = 5
  # Keyword prompting: the keyword file (one per line); empty: WORKDIR/keywords.txt, built
  # from data.train's captions with the words at least keyword_min_count captions name.
  c.data.keywords = ""
  c.data.keyword_min_count = 5
  # Linear probes on frozen image embeddings: comma-separated [NAME=]TRAIN_SPEC=>TEST_SPEC
  # (evaluate/probe.py), run where evaluation runs; empty: none.
  c.data.probe = ""

  c.train = ConfigDict()
  c.train.batch_size = 64  # global, over all hosts and devices
  c.train.steps = 100
  c.train.accum_steps = 1  # micro-batches per step; contrastive terms still see the full batch
  c.train.log_every = 10
  c.train.eval_every = 0  # 0: only at the end
  c.train.checkpoint_every = 50
  c.train.keep_checkpoints = 3
  c.train.profile_port = 0  # >0: start jax.profiler server for on-demand traces
  c.train.profile_steps = 0  # >0: write a trace of this many steps after the first log period
  # A step whose loss, gradient norm or new parameters are not finite never changes the
  # state. stop: the run ends with an error naming the step (the last good checkpoint
  # stays the latest); skip: the batch is skipped and counted, up to max_nonfinite in a row.
  c.train.nonfinite = "stop"
  c.train.max_nonfinite = 10
  # jax's persistent compilation cache, so a restarted run does not compile again.
  # Empty: WORKDIR/compile_cache; "none": off; else a directory (local or gs://).
  c.train.compile_cache = ""

  c.optim = ConfigDict()
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 10
  c.optim.min_lr_ratio = 0.0
  c.optim.weight_decay = 0.1
  # decoupled: each step multiplies a weight by 1 - weight_decay * schedule(t) (big_vision,
  # the AdamW paper), schedule(t) = lr(t) / lr; lr_coupled: by 1 - lr(t) * weight_decay
  # (PyTorch and optax AdamW).
  c.optim.weight_decay_mode = "lr_coupled"
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.clip_norm = 1.0  # 0 disables clipping

  c.mesh = ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.model = 1

  c.eval = ConfigDict()
  c.eval.batch_size = 256
  c.eval.max_examples = 0  # 0: the whole split
  c.eval.itm_top_k = 16  # retrieval_itm: ITC's top k re-ranked by the matching head (COCO: 256)

  c.decode = ConfigDict()  # --mode=caption (captioning families: coca)
  c.decode.method = "beam"  # greedy, beam or sample
  c.decode.beam_size = 4
  c.decode.length_penalty = 0.6  # alpha of GNMT's ((5 + length) / 6) ** alpha; >= 0
  c.decode.temperature = 1.0  # sample: logits / temperature
  c.decode.top_k = 0  # sample: only the k most likely tokens; 0: all
  c.decode.top_p = 1.0  # sample: nucleus, the fewest tokens with this much probability
  c.decode.max_length = 0  # generated tokens, EOS included; 0: model.context_length
  c.decode.show = 10  # captions printed next to the true ones
  c.decode.prompt = ""  # text every caption starts with (BLIP-2's "a photo of"); generated after it

  c.vqa = ConfigDict()  # model.name='vqa': fine-tuning a decoder family to answer questions
  c.vqa.family = "blip"  # the wrapped pretraining family (one with answer_features/answer)
  # Answer tokens, EOS included; questions keep model.context_length minus these (the
  # decoder reads the question, then the answer, within its position table).
  c.vqa.answer_length = 8
  c.vqa.blind = False  # the question-only baseline: every image replaced by zeros
  # "": answers generated greedily; "train": ranked over every distinct answer of data.train
  # (WORKDIR/answers.txt); else a text file, one answer per line.
  c.vqa.candidates = ""

  c.export = ConfigDict()  # --mode=export (train/export.py)
  c.export.format = "vlp"  # vlp: orbax parameters + config + tokenizer; open_clip: a state dict
  c.export.dtype = "float32"  # float32 or bfloat16: the floating parameters as written
  c.export.family_state = False  # also the family's state (momentum copies, queues)
  return c


def to_json(config):
  """The resolved config as JSON (every field is a number, string or bool)."""
  return config.to_json(indent=2, sort_keys=True)


def from_json(text):
  """A config from `to_json`'s text: base_config updated field by field, so a field this
  version does not know is a one-line error and fields added since take their defaults."""
  c = base_config()

  def merge(target, values, prefix):
    for key, value in values.items():
      if key not in target:
        raise ValueError(f"Unknown config field {prefix + key!r} in the saved config")
      if isinstance(target[key], ConfigDict):
        merge(target[key], value, f"{prefix}{key}.")
      else:
        target[key] = value
  merge(c, json.loads(text), "")
  return c


def _check_keys(config, reference, prefix=""):
  for key in config.keys():
    name = prefix + key
    if key not in reference:
      near = [k for k in reference.keys() if k.startswith(key[:3])]
      hint = f"; did you mean {near}?" if near else ""
      raise ValueError(f"Unknown config field {name!r}{hint}")
    if isinstance(reference[key], ConfigDict):
      if not isinstance(config[key], ConfigDict):
        raise ValueError(f"Config field {name!r} must be a group of fields")
      _check_keys(config[key], reference[key], name + ".")


def _require(ok, field, message):
  if not ok:
    raise ValueError(f"Config field {field!r}: {message}")


def _finite_in(value, field, low, high, low_open=False, high_open=False):
  """A finite number within [low, high] (None: unbounded; *_open: bound excluded)."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"Config field {field!r}: {value!r} is not a number") from None
  lo = "(" if low_open or low is None else "["
  hi = ")" if high_open or high is None else "]"
  where = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
  ok = math.isfinite(number)
  if ok and low is not None:
    ok = number > low if low_open else number >= low
  if ok and high is not None:
    ok = number < high if high_open else number <= high
  _require(ok, field, f"{value!r} is not a finite number in {where}")


def validate(config):
  """Raises ValueError naming the field for typos and values that cannot work."""
  _check_keys(config, base_config())
  m, t, o, d = config.model, config.train, config.optim, config.data
  # Read lazily: the families import this module.
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  names = tuple(sorted(families.FAMILIES))
  _require(m.name in families.FAMILIES, "model.name", f"{m.name!r} is not one of {names}")
  family = families.FAMILIES[m.name]
  _require(family.EXACT_ACCUMULATION or t.accum_steps == 1, "train.accum_steps",
           f"{t.accum_steps}: family {m.name!r} declares no exact gradient accumulation "
           f"(EXACT_ACCUMULATION = False); use 1")
  _require(bool(m.init_from) or not m.init_from_map, "model.init_from_map",
           "is set but model.init_from names no run")
  for field in ("dtype", "frozen_dtype"):
    _require(m[field] in DTYPES, f"model.{field}", f"{m[field]!r} is not one of {DTYPES}")
  _require(m.remat_policy in REMAT_POLICIES, "model.remat_policy",
           f"{m.remat_policy!r} is not one of {REMAT_POLICIES}")
  _require(config.loss.contrastive in CONTRASTIVE_IMPLS, "loss.contrastive",
           f"{config.loss.contrastive!r} is not one of {CONTRASTIVE_IMPLS}")
  _require(m.image_size % m.patch_size == 0, "model.image_size",
           f"{m.image_size} is not a multiple of model.patch_size={m.patch_size}")
  for tower in ("vision", "text"):
    width, heads = m[f"{tower}_width"], m[f"{tower}_heads"]
    _require(width % heads == 0, f"model.{tower}_width",
             f"{width} is not divisible by model.{tower}_heads={heads}")
  _require(m.image_pool in ("cls", "map", "none"), "model.image_pool",
           f"{m.image_pool!r} is not cls, map or none")
  _require(m.text_pool in ("eos", "last", "argmax"), "model.text_pool",
           f"{m.text_pool!r} is not eos, last or argmax")
  _finite_in(m.layer_norm_eps, "model.layer_norm_eps", 0, None, low_open=True)
  for field in ("vision_patch_bias", "vision_pre_norm", "vision_proj", "text_proj_bias"):
    _require(isinstance(m[field], bool), f"model.{field}", f"{m[field]!r} is not True or False")
  _require(m.vision_proj or m.embed_dim == m.vision_width, "model.vision_proj",
           f"False needs model.embed_dim == model.vision_width, got {m.embed_dim} and "
           f"{m.vision_width}")
  for field, value in (("model.activation", m.activation), ("model.lm.activation",
                                                           m.lm.activation)):
    _require(value in ACTIVATIONS, field, f"{value!r} is not one of {ACTIVATIONS}")
  _require(m.multimodal_depth >= 1, "model.multimodal_depth", "must be >= 1")
  _require(m.num_decoder_queries >= 1, "model.num_decoder_queries", "must be >= 1")
  _require(m.coca_pooling in ("attention", "cls"), "model.coca_pooling",
           f"{m.coca_pooling!r} is not attention or cls")
  _require(m.multimodal_layer in ("paper", "open_clip"), "model.multimodal_layer",
           f"{m.multimodal_layer!r} is not paper or open_clip")
  for weight in ("contrastive_weight", "caption_weight"):
    _require(config.loss[weight] >= 0, f"loss.{weight}", "must be >= 0")
  dec = config.decode
  _require(dec.method in DECODE_METHODS, "decode.method",
           f"{dec.method!r} is not one of {DECODE_METHODS}")
  _require(dec.beam_size >= 1, "decode.beam_size", "must be >= 1")
  _require(dec.length_penalty >= 0, "decode.length_penalty", "must be >= 0")
  _require(0 < dec.top_p <= 1, "decode.top_p", "must be in (0, 1]")
  _require(dec.temperature >= 0, "decode.temperature", "must be >= 0 (0: greedy)")
  _require(0 <= dec.max_length <= m.context_length, "decode.max_length",
           f"must be in [0, model.context_length={m.context_length}]")
  _require(t.batch_size > 0, "train.batch_size", "must be positive")
  _require(t.accum_steps >= 1 and t.batch_size % t.accum_steps == 0, "train.accum_steps",
           f"{t.accum_steps} must be >= 1 and divide train.batch_size={t.batch_size}")
  _require(t.steps > 0, "train.steps", "must be positive")
  for field in ("log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite"):
    _require(t[field] >= 1, f"train.{field}", f"must be >= 1, got {t[field]}")
  for field in ("eval_every", "profile_steps", "profile_port"):
    _require(t[field] >= 0, f"train.{field}", f"must be >= 0, got {t[field]}")
  _require(t.nonfinite in NONFINITE, "train.nonfinite", f"{t.nonfinite!r} is not one of {NONFINITE}")
  _require(o.schedule in SCHEDULES, "optim.schedule", f"{o.schedule!r} is not one of {SCHEDULES}")
  _require(o.weight_decay_mode in WEIGHT_DECAY_MODES, "optim.weight_decay_mode",
           f"{o.weight_decay_mode!r} is not one of {WEIGHT_DECAY_MODES}")
  _finite_in(o.lr, "optim.lr", 0, None, low_open=True)
  _finite_in(o.weight_decay, "optim.weight_decay", 0, None)
  _finite_in(o.min_lr_ratio, "optim.min_lr_ratio", 0, 1)
  _finite_in(o.b1, "optim.b1", 0, 1, high_open=True)
  _finite_in(o.b2, "optim.b2", 0, 1, high_open=True)
  _finite_in(o.eps, "optim.eps", 0, None, low_open=True)
  _finite_in(o.clip_norm, "optim.clip_norm", 0, None)
  _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
  for field in ("logit_scale_init", "logit_scale_max"):
    _finite_in(m[field], f"model.{field}", 0, None, low_open=field == "logit_scale_init")
  _finite_in(m.logit_bias_init, "model.logit_bias_init", None, None)
  for field in ("vision_mlp_ratio", "text_mlp_ratio"):
    _finite_in(m[field], f"model.{field}", 0, None, low_open=True)
  for field in ("embed_dim", "image_size", "patch_size", "vision_width", "vision_depth",
                "vision_heads", "vocab_size", "context_length", "text_width", "text_depth",
                "text_heads"):
    _require(m[field] >= 1, f"model.{field}", f"must be >= 1, got {m[field]}")
  _finite_in(d.crop_min_scale, "data.crop_min_scale", 0, 1, low_open=True)
  _require(d.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {d.shuffle_buffer}")
  _require(d.prefetch >= 1, "data.prefetch", f"must be >= 1, got {d.prefetch}")
  _require(d.shard_cycle >= 1, "data.shard_cycle", f"must be >= 1, got {d.shard_cycle}")
  _require(d.num_parallel_calls == -1 or d.num_parallel_calls >= 1, "data.num_parallel_calls",
           f"must be -1 (one per core) or >= 1, got {d.num_parallel_calls}")
  _require(d.eval_resize in EVAL_RESIZES, "data.eval_resize",
           f"{d.eval_resize!r} is not one of {EVAL_RESIZES}")
  _require(config.eval.batch_size >= 1, "eval.batch_size",
           f"must be >= 1, got {config.eval.batch_size}")
  _require(config.eval.max_examples >= 0, "eval.max_examples",
           f"must be >= 0 (0: all), got {config.eval.max_examples}")
  _require(d.augment in AUGMENTS, "data.augment", f"{d.augment!r} is not one of {AUGMENTS}")
  _require(d.zeroshot_templates in ("short", "clip80"), "data.zeroshot_templates",
           f"{d.zeroshot_templates!r} is not short or clip80")
  _require(0 < d.holdout_percent < 100, "data.holdout_percent", "must be in (0, 100)")
  _require(d.keyword_min_count >= 1, "data.keyword_min_count",
           f"must be >= 1, got {d.keyword_min_count}")
  _require(d.synset_min_count >= 1, "data.synset_min_count",
           f"must be >= 1, got {d.synset_min_count}")
  _require(config.loss.bce_reduction in BCE_REDUCTIONS, "loss.bce_reduction",
           f"{config.loss.bce_reduction!r} is not one of {BCE_REDUCTIONS}")
  _finite_in(config.loss.pos_weight, "loss.pos_weight", 0, None, low_open=True)
  lo = config.loss
  for weight in ("itc_weight", "itm_weight", "lm_weight"):
    _finite_in(lo[weight], f"loss.{weight}", 0, None)
  _finite_in(lo.momentum, "loss.momentum", 0, 1)
  _finite_in(lo.distill_alpha, "loss.distill_alpha", 0, 1)
  _finite_in(lo.mlm_prob, "loss.mlm_prob", 0, 1, low_open=True, high_open=True)
  _finite_in(lo.itc_label_smoothing, "loss.itc_label_smoothing", 0, 1, high_open=True)
  _require(lo.distill_ramp_steps >= 0, "loss.distill_ramp_steps", "must be >= 0")
  _require(lo.queue_size >= 0, "loss.queue_size", f"must be >= 0, got {lo.queue_size}")
  _finite_in(m.dropout, "model.dropout", 0, 1, high_open=True)
  for field in ("width", "depth", "heads", "positions"):
    _require(m.lm[field] >= 1, f"model.lm.{field}", f"must be >= 1, got {m.lm[field]}")
  _require(m.lm.width % m.lm.heads == 0, "model.lm.width",
           f"{m.lm.width} is not divisible by model.lm.heads={m.lm.heads}")
  _require(m.lm.position_offset >= 0, "model.lm.position_offset", "must be >= 0")
  _finite_in(m.lm.mlp_ratio, "model.lm.mlp_ratio", 0, None, low_open=True)
  _require(-m.vision_depth <= m.vision_feature_layer <= -1, "model.vision_feature_layer",
           f"{m.vision_feature_layer} must be in [-model.vision_depth, -1]")
  for field in ("num_queries", "cross_attention_every", "mapper_depth", "num_keywords",
                "keyword_top_k"):
    _require(m[field] >= 1, f"model.{field}", f"must be >= 1, got {m[field]}")
  _require(m.fusion_depth >= 1, "model.fusion_depth", f"must be >= 1, got {m.fusion_depth}")
  _require(config.eval.itm_top_k >= 1, "eval.itm_top_k",
           f"must be >= 1, got {config.eval.itm_top_k}")
  _check_vqa(config, names)
  _check_export(config)
  if d.probe:
    from vlp_jax.evaluate import probe  # pylint: disable=g-import-not-at-top
    try:
      probe.parse_probe_specs(d.probe)
    except ValueError as e:
      _require(False, "data.probe", str(e))
  family.check_config(config)  # what only this family's fields must satisfy
  _require(bool(d.train), "data.train", "must name a dataset, e.g. builtin:shapes:train")
  for axis in ("data", "fsdp", "model"):
    size = config.mesh[axis]
    _require(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 or >= 1, got {size}")
  return config


def _check_export(config):
  e = config.export
  _require(e.format in EXPORT_FORMATS, "export.format", f"{e.format!r} is not one of {EXPORT_FORMATS}")
  _require(e.dtype in EXPORT_DTYPES, "export.dtype", f"{e.dtype!r} is not one of {EXPORT_DTYPES}")


def _check_vqa(config, names):
  """The vqa group's own values; how they fit the model is VqaFamily.check_config's, and
  a candidates file is read by its prepare."""
  v = config.vqa
  _require(v.family in names, "vqa.family", f"{v.family!r} is not one of {names}")
  _require(isinstance(v.blind, bool), "vqa.blind", f"{v.blind!r} is not True or False")
  _require(isinstance(v.candidates, str), "vqa.candidates",
           f"{v.candidates!r} is not '', 'train' or a file path")
  _require(v.answer_length >= 2, "vqa.answer_length",
           f"must be >= 2 (an answer piece and EOS), got {v.answer_length}")


def eval_specs(config):
  """The list form of `data.eval` (a comma-separated string on the command line)."""
  value = config.data.eval
  items = value.split(",") if isinstance(value, str) else list(value)
  return [s.strip() for s in items if s.strip()]
