"""SigLIP B/16 (224px) with the sizes of the SigLIP paper, for TPU pods.

  python main.py --config=configs/siglip_b16.py --mode=describe --devices=256
  python main.py --config=configs/siglip_b16.py --workdir=gs://BUCKET/siglip_b16 \
      --config.data.train=jsonl:/data/pairs:train

Image tower: ViT-B/16 without a class token, pooled by a MAP (attention-pooling) head.
Text tower: 32,000-token vocabulary, context 64, width 768, 12 layers, bidirectional,
pooled at the last position. Joint space 768. Sigmoid loss with t' = log 10, b = -10,
ring-chunked across devices so the loss memory stays O(b^2) per chip at batch 32k.
"""
from vlp_jax import config_lib


def get_config(arg=None):
  """Arguments: scan, remat (on by default; they win on TPU at this depth), ring."""
  arg = config_lib.parse_arg(arg, scan=True, remat=True, ring=True)
  c = config_lib.base_config()
  m = c.model
  m.name = "siglip"
  m.image_size, m.patch_size = 224, 16
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.image_pool = "map"
  m.vocab_size, m.context_length = 32_000, 64
  m.text_width, m.text_depth, m.text_heads = 768, 12, 12
  m.text_causal, m.text_pool = False, "last"
  m.embed_dim = 768
  m.activation = "gelu_tanh"
  m.logit_scale_init, m.logit_scale_max, m.logit_bias_init = 10.0, 0.0, -10.0
  m.dtype = "bfloat16"
  m.scan, m.remat = arg.scan, arg.remat
  c.loss.contrastive = "ring" if arg.ring else "allgather"

  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.data.augment = "crop"
  c.data.crop_min_scale = 0.9

  c.train.batch_size = 32_768
  c.train.steps = 107_000  # ~9B examples seen, as in the paper's B/16 runs
  c.train.log_every = 100
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 2_000
  c.eval.batch_size = 4_096

  c.optim.lr = 1e-3
  c.optim.warmup_steps = 5_000
  c.optim.weight_decay = 1e-4
  # big_vision's convention (where this value comes from): wd x schedule(t), not x lr(t).
  c.optim.weight_decay_mode = "decoupled"
  c.optim.b2 = 0.95

  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  return c
