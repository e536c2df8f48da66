"""ALBEF with the paper's sizes (ViT-B/16 + BERT-base split into 6 text + 6 fusion layers);
`:variant=tiny` trains on CPU.

  python main.py --config=configs/albef_base.py --mode=describe --devices=64
  python main.py --config=configs/albef_base.py:variant=tiny --workdir=workdirs/albef_tiny

Base (Li et al. 2021, "Align before Fuse", sec. 3.1 and 5): ViT-B/16 image encoder (85.8M in
the paper), text encoder and multimodal encoder of 6 layers each from BERT-base (123.7M with
the cross-attention), 256-d joint space, temperature 0.07, momentum 0.995, queue 65,536,
distillation alpha 0.4 ramped over the first epoch, MLM at 15%; pretraining at 256px with
batch 512, AdamW lr 1e-4, weight decay 0.02, 30 epochs. BERT's uncased vocabulary has
30,522 tokens; here the tokenizer is trained on your captions (data.tokenizer to reuse one).
`--mode=describe` prints the parameters per part (README: family table).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), scan, remat, jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", scan=True, remat=True, jsonl="")
  if arg.variant == "tiny":
    return tiny(arg, "albef")
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  c = base(arg, "albef")
  c.model.image_size = 256
  c.model.text_depth, c.model.fusion_depth = 6, 6
  c.model.context_length = 32  # ALBEF truncates captions at 30 words
  c.loss.queue_size = 65_536
  c.train.batch_size = 512
  c.train.steps = 30 * 7_800  # 30 epochs of the 4M-image set
  c.loss.distill_ramp_steps = 7_800  # one epoch
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.02
  return c


def base(arg, name):
  """What ALBEF and BLIP base share: ViT-B/16, BERT-base width, dropout 0.1, AdamW."""
  c = config_lib.base_config()
  m = c.model
  m.name = name
  m.patch_size = 16
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.text_width, m.text_heads = 768, 12
  m.vocab_size = 30_528  # BERT's 30,522 plus room for the special symbols, a multiple of 8
  m.embed_dim = 256
  m.logit_scale_init = 1 / 0.07
  m.dropout = 0.1
  m.dtype = "bfloat16"
  m.scan, m.remat = arg.scan, arg.remat
  c.loss.momentum, c.loss.distill_alpha = 0.995, 0.4
  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.data.augment = "crop"
  c.data.crop_min_scale = 0.5  # ALBEF/BLIP: RandomResizedCrop scale (0.5, 1.0)
  c.train.log_every = 100
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 2_000
  c.eval.batch_size = 1_024
  c.eval.itm_top_k = 256  # as the papers' COCO retrieval
  c.optim.warmup_steps = 3_000
  c.optim.b2 = 0.999
  c.optim.weight_decay_mode = "lr_coupled"  # PyTorch AdamW, as the papers' code
  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  return c


def tiny(arg, name):
  """clip_tiny's image tower (32px, width 128) with 2 text (+ 1 fusion) layers."""
  c = config_lib.base_config()
  m = c.model
  m.name = name
  m.image_size, m.patch_size = 32, 8
  m.vision_width = m.text_width = 128
  m.vision_heads = m.text_heads = 4
  m.vision_depth, m.text_depth, m.fusion_depth = 2, 2, 1
  m.embed_dim = 128
  m.vocab_size = 128
  m.context_length = 24  # the longest shapes caption is 20 tokens with EOS, plus [CLS]
  config_files.demo_data(c, arg.jsonl)
  c.loss.queue_size = 1_024
  c.loss.distill_ramp_steps = 100
  config_files.demo_schedule(c)
  return c
