"""Prefix captioning (the Image2Poem idea, ClipCap's transformer mapper): a mapping network
of learned queries reads a frozen CLIP tower and prompts a frozen decoder LM.

  python main.py --config=configs/prefix_caption.py:variant=tiny --workdir=workdirs/prefix \
      --config.model.init_from="workdirs/clip_tiny;workdirs/lm_tiny" \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model
  python main.py --config=configs/prefix_caption.py:variant=tiny --workdir=workdirs/prefix \
      --mode=caption --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model
  python main.py --config=configs/prefix_caption.py:variant=tiny,keywords=True \
      --workdir=workdirs/keywords --config.model.init_from="workdirs/clip_tiny;workdirs/lm_tiny" \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model

Only the mapper trains: `num_queries` queries of the LM's width, `mapper_depth` pre-LN
layers with cross-attention to every token of the CLIP tower's last layer. Base: CLIP
ViT-B/16 and GPT-2 (124M: 12 layers of width 768, 1,024 positions, vocabulary 50,257 + our
padding row) with a 10-query, 8-layer mapper as ClipCap (Mokady et al. 2021).

`keywords=True` (`model.name='keyword_lm'`, Image2Poem's first version): no mapper; the
frozen CLIP run's two towers pick model.keyword_top_k keywords of the vocabulary
(data.keywords, or words of the training captions) for each image, and the LM, trained,
writes the caption after their pieces (model.num_queries prompt tokens).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), jsonl=FOLDER (tiny), keywords (keyword prompting)."""
  arg = config_lib.parse_arg(arg, variant="base", jsonl="", keywords=False)
  c = config_lib.base_config()
  m = c.model
  m.name = "keyword_lm" if arg.keywords else "prefix_lm"
  m.vision_feature_layer = -1
  m.keyword_top_k = 3
  if arg.variant == "tiny":
    m.image_size, m.patch_size = 32, 8
    m.vision_width, m.vision_depth, m.vision_heads = 128, 2, 4
    m.text_width, m.text_depth, m.text_heads, m.embed_dim = 128, 2, 4, 128  # clip_tiny's
    m.vocab_size, m.context_length = 128, 24
    m.num_queries, m.mapper_depth = 8, 2
    m.lm.width, m.lm.depth, m.lm.heads, m.lm.positions = 128, 2, 4, 64
    config_files.demo_data(c, arg.jsonl)
    config_files.demo_schedule(c)
    c.decode.method, c.decode.beam_size = "beam", 3
    return c
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  m.image_size, m.patch_size = 224, 16
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.text_width, m.text_depth, m.text_heads, m.embed_dim = 512, 12, 8, 512  # CLIP ViT-B/16's
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
