"""Prefix captioning (the Image2Poem idea, ClipCap's transformer mapper): a mapping network
of learned queries reads a frozen CLIP tower and prompts a frozen decoder LM.

  python main.py --config=configs/prefix_caption.py:variant=tiny --workdir=workdirs/prefix \
      --config.model.init_from="workdirs/clip_tiny;workdirs/lm_tiny" \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model
  python main.py --config=configs/prefix_caption.py:variant=tiny --workdir=workdirs/prefix \
      --mode=caption

Only the mapper trains: `num_queries` queries of the LM's width, `mapper_depth` pre-LN
layers with cross-attention to every token of the CLIP tower's last layer. Base: CLIP
ViT-B/16 and GPT-2 (124M: 12 layers of width 768, 1,024 positions, vocabulary 50,257 + our
padding row) with a 10-query, 8-layer mapper as ClipCap (Mokady et al. 2021).
"""
from vlp_jax import config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", jsonl="")
  c = config_lib.base_config()
  m = c.model
  m.name = "prefix_lm"
  m.vision_feature_layer = -1
  if arg.variant == "tiny":
    m.image_size, m.patch_size = 32, 8
    m.vision_width, m.vision_depth, m.vision_heads = 128, 2, 4
    m.vocab_size, m.context_length = 128, 24
    m.num_queries, m.mapper_depth = 8, 2
    m.lm.width, m.lm.depth, m.lm.heads, m.lm.positions = 128, 2, 4, 64
    if arg.jsonl:
      c.data.train = f"jsonl:{arg.jsonl}:train"
      c.data.eval = f"jsonl:{arg.jsonl}:test"
      m.vocab_size = 2048
    c.train.batch_size = 128
    c.train.steps = 600
    c.train.log_every = 50
    c.train.checkpoint_every = 200
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.decode.method, c.decode.beam_size = "beam", 3
    return c
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  m.image_size, m.patch_size = 224, 16
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.activation = "quick_gelu"  # OpenAI CLIP
  m.vocab_size, m.context_length = 50_258, 40
  m.num_queries, m.mapper_depth = 10, 8
  m.lm.width, m.lm.depth, m.lm.heads = 768, 12, 12
  m.lm.positions = 1024
  m.frozen_dtype = "bfloat16"
  m.dtype = "bfloat16"
  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.train.batch_size = 256
  c.train.steps = 50_000
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 5_000
  c.optim.weight_decay_mode = "lr_coupled"
  return c
