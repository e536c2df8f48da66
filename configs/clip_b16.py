"""CLIP ViT-B/16 with the OpenAI sizes, for TPU pods (global batch 32,768).

  python main.py --config=configs/clip_b16.py --mode=describe --devices=256  # a v4-512 / v5p-512 slice
  python main.py --config=configs/clip_b16.py --workdir=gs://BUCKET/clip_b16 \
      --config.data.train=jsonl:/data/pairs:train --config.data.eval=jsonl:/data/pairs:test

Image tower: 224px, patch 16, width 768, 12 layers, 12 heads. Text tower: 49,408-token
vocabulary, context 77, width 512, 12 layers, 8 heads, causal. Joint space 512.
149.6M parameters. Optimisation as in the CLIP paper (AdamW, lr 5e-4, wd 0.2, b2 0.98).
"""
from vlp_jax import config_lib


def get_config(arg=None):
  """Arguments: scan, remat (both on by default; they win on TPU at this depth)."""
  arg = config_lib.parse_arg(arg, scan=True, remat=True)
  c = config_lib.base_config()
  m = c.model
  m.name = "clip"
  m.image_size, m.patch_size = 224, 16
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.vocab_size, m.context_length = 49_408, 77
  m.text_width, m.text_depth, m.text_heads = 512, 12, 8
  m.embed_dim = 512
  m.activation = "quick_gelu"
  m.dtype = "bfloat16"
  m.scan = arg.scan  # flat compile time in depth
  m.remat = arg.remat  # activation memory of 128 examples per chip

  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.data.augment = "crop"
  c.data.crop_min_scale = 0.9

  c.train.batch_size = 32_768
  c.train.steps = 390_000  # ~32 epochs of 400M pairs
  c.train.log_every = 100
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 2_000
  c.eval.batch_size = 4_096

  c.optim.lr = 5e-4
  c.optim.warmup_steps = 2_000
  c.optim.weight_decay = 0.2
  c.optim.weight_decay_mode = "lr_coupled"  # CLIP trained with PyTorch AdamW: lr(t) x 0.2

  # Every chip holds a 1/n slice of weights and optimizer state (ZeRO-3) and 128 examples.
  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  return c
