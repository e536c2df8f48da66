"""BLIP-2 stage 1: a Q-Former learns to read a frozen image tower (ITC + ITM + ITG).

  python main.py --config=configs/blip2_stage1.py:variant=tiny --workdir=workdirs/blip2_s1 \
      --config.model.init_from=workdirs/clip_tiny \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model
  python main.py --config=configs/blip2_stage1.py --mode=describe --devices=256

`model.init_from` names the run whose image tower is frozen here (CLIP, SigLIP or CoCa;
model.image_pool says whether its tower has a class token: cls, map (SigLIP) or none
(CoCa)); every parameter with the same path and shape loads, the tower's last block and
final LayerNorm are not read (model.vision_feature_layer = -2).

Base (Li et al. 2023, sec. 3 and 4): EVA ViT-g/14 at 224px without its last layer, the
Q-Former from BERT-base (12 layers of width 768, cross-attention every other layer) with 32
queries, 256-d ITC space; batch 1,680 for ViT-g, AdamW (0.9, 0.98), weight decay 0.05, peak
lr 1e-4 after 2k warm-up steps, cosine to 5e-5, 250k steps. The paper's Q-Former starts
from BERT-base weights; here it starts at random unless init_from maps some in.
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", jsonl="")
  c = config_lib.base_config()
  m = c.model
  m.name = "blip2"
  if arg.variant == "tiny":
    return tiny(c, arg)
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  vit_g(m)
  qformer_base(m)
  m.embed_dim = 256
  m.vocab_size = 30_528  # BERT's 30,522 plus room for the special symbols
  m.context_length = 32
  m.dropout = 0.1
  m.dtype = "bfloat16"
  m.scan = True  # compile time flat in depth (the Q-Former stays unrolled: 12 layers)
  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.train.batch_size = 1_680
  c.train.steps = 250_000
  c.train.log_every = 100
  c.train.checkpoint_every = 5_000
  optimizer(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  return c


def vit_g(m):
  """EVA ViT-g/14 (Fang et al. 2022), the frozen tower of BLIP-2's best models."""
  m.image_size, m.patch_size = 224, 14
  m.vision_width, m.vision_depth, m.vision_heads = 1408, 40, 16
  m.vision_mlp_ratio = 6144 / 1408
  m.image_pool = "cls"
  m.vision_feature_layer = -2


def qformer_base(m):
  m.text_width, m.text_depth, m.text_heads = 768, 12, 12
  m.num_queries = 32
  m.cross_attention_every = 2


def optimizer(c):
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 2_000
  c.optim.min_lr_ratio = 0.5  # cosine from 1e-4 to 5e-5
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.98
  c.optim.weight_decay_mode = "lr_coupled"  # PyTorch AdamW, as LAVIS


def tiny(c, arg):
  """clip_tiny's tower (its first block read), a 2-layer Q-Former of width 128, 8 queries."""
  m = c.model
  m.image_size, m.patch_size = 32, 8
  m.vision_width, m.vision_depth, m.vision_heads = 128, 2, 4
  m.vision_feature_layer = -2
  m.text_width, m.text_depth, m.text_heads = 128, 2, 4
  m.num_queries = 8
  m.embed_dim = 128
  m.vocab_size = 128
  m.context_length = 24
  config_files.demo_data(c, arg.jsonl)
  config_files.demo_schedule(c)
  return c
