"""CoCa-Base with the paper's sizes, for TPU pods; `:variant=tiny` trains on CPU.

  python main.py --config=configs/coca_base.py --mode=describe --devices=256
  python main.py --config=configs/coca_base.py:variant=tiny --workdir=workdirs/coca_tiny

Base (Yu et al. 2022, table 1): image encoder ViT with 12 layers of width 768 (12 heads)
on 288px images in 18px patches, 256 tokens, no class token; text decoder of width 768,
12 unimodal + 12 multimodal layers, 64k sentencepiece vocabulary, untied output
projection; attentional poolers with 1 (contrastive) and 256 (captioning) queries;
loss = 1.0 * contrastive + 2.0 * captioning.

Parameters (describe): 388.6M against the paper's 383M (+1.5%). image_tower 86.0M (paper:
86M); text_decoder 297.3M (paper: 297M): layers 198.5M (12 x 7.09M unimodal, 12 x 9.45M
multimodal with cross-attention), token embeddings 64,000 x 768 = 49.2M, output projection
768 x 64,000 + bias = 49.2M, text projection 0.4M. The difference is the two poolers
(contrastive_pooler 2.8M with the projection to the joint space, caption_pooler 2.6M with
its 256 queries), which the paper's breakdown does not list; the 512-wide joint space is
open_clip's choice (the paper does not state it). Context length 64 (not in the paper;
50K parameters either way).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), scan, remat (on for base), jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", scan=True, remat=True, jsonl="")
  if arg.variant == "tiny":
    return _tiny(arg)
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  c = config_lib.base_config()
  m = c.model
  m.name = "coca"
  m.image_size, m.patch_size = 288, 18
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.vocab_size, m.context_length = 64_000, 64
  m.text_width, m.text_depth, m.text_heads = 768, 12, 12
  m.multimodal_depth = 12
  m.num_decoder_queries = 256
  m.embed_dim = 512
  m.dtype = "bfloat16"
  m.scan, m.remat = arg.scan, arg.remat
  c.loss.contrastive_weight, c.loss.caption_weight = 1.0, 2.0

  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.data.augment = "crop"
  c.data.crop_min_scale = 0.9

  # The paper trains with batch 65,536 for 500k steps (Adafactor); AdamW here, as CLIP.
  c.train.batch_size = 32_768
  c.train.steps = 500_000
  c.train.log_every = 100
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 2_000
  c.eval.batch_size = 4_096
  c.optim.lr = 8e-4
  c.optim.warmup_steps = 2_000
  c.optim.weight_decay = 0.01
  c.optim.weight_decay_mode = "decoupled"  # the paper: "decoupled weight decay ratio of 0.01"
  c.optim.b2 = 0.999
  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  return c


def _tiny(arg):
  """clip_tiny's towers (32px, width 128) with a 2 + 1 layer decoder and 16 image queries."""
  c = config_lib.base_config()
  m = c.model
  m.name = "coca"
  m.image_size, m.patch_size = 32, 8
  m.vision_width = m.text_width = 128
  m.vision_heads = m.text_heads = 4
  m.vision_depth, m.text_depth, m.multimodal_depth = 2, 2, 1
  m.num_decoder_queries = 16
  m.embed_dim = 128
  m.vocab_size = 128
  m.context_length = 24  # the longest shapes caption is 20 tokens with EOS
  config_files.demo_data(c, arg.jsonl)
  # lr_coupled 0.1 (1e-4 per step at peak): the paper's decoupled 0.01 would shrink the
  # weights of a 600-step run by e^-6.
  config_files.demo_schedule(c)
  return c
