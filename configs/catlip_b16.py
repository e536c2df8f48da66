"""CatLIP ViT-B/16: an image tower pretrained by classifying its caption's WordNet synsets.

  python main.py --config=configs/catlip_b16.py --mode=describe --devices=256
  python main.py --config=configs/catlip_b16.py --workdir=gs://BUCKET/catlip_b16 \
      --config.data.train=jsonl:/data/pairs:train
  python main.py --config=configs/catlip_b16.py:variant=tiny --workdir=workdirs/catlip_tiny

No text tower. The image tower is clip_b16's (224px, patch 16, width 768, 12 layers), so the
two compare on the objective alone; its pooled embedding (512) feeds a linear head over
`model.vocab_size` synsets: those named by at least `data.synset_min_count` captions (the
paper keeps 2k-25k on web data with a threshold of 500 on DataComp), built into
WORKDIR/synsets.txt at the start of the first run. Loss: sigmoid BCE summed over the
labels, averaged over images (CatLIP's `batch_mean`). The seed notes give no optimiser
recipe: clip_b16's (AdamW lr 5e-4, wd 0.2, batch 32,768) keeps the comparison to the
objective. Variant `tiny`: clip_tiny's image tower on the built-in shapes data.
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
  m.name = "catlip"
  m.image_size, m.patch_size = 224, 16
  m.vision_width, m.vision_depth, m.vision_heads = 768, 12, 12
  m.embed_dim = 512
  m.vocab_size = 24_576  # head rows: the synset vocabulary, at most this many
  m.activation = "quick_gelu"
  m.dtype = "bfloat16"
  m.scan, m.remat = arg.scan, arg.remat

  c.data.train = "jsonl:data/pairs:train"  # set to your data
  c.data.eval = ""
  c.data.augment = "crop"
  c.data.crop_min_scale = 0.9
  c.data.synset_min_count = 500

  c.train.batch_size = 32_768
  c.train.steps = 390_000
  c.train.log_every = 100
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 2_000
  c.eval.batch_size = 4_096

  c.optim.lr = 5e-4
  c.optim.warmup_steps = 2_000
  c.optim.weight_decay = 0.2
  c.optim.weight_decay_mode = "lr_coupled"  # as clip_b16 (PyTorch AdamW)
  c.mesh.data, c.mesh.fsdp, c.mesh.model = 1, -1, 1
  return c


def _tiny(arg):
  """clip_tiny's image tower (32px, width 128, 2 layers) and a 64-row head, 600 steps."""
  c = config_lib.base_config()
  m = c.model
  m.name = "catlip"
  m.image_size, m.patch_size = 32, 8
  m.vision_width, m.vision_depth, m.vision_heads = 128, 2, 4
  m.embed_dim = 128
  m.vocab_size = 64  # the shapes captions name about 20 synsets
  c.data.synset_min_count = 5
  c.data.train = "builtin:shapes:train"
  c.data.eval = "builtin:shapes:test"
  c.data.probe = "builtin:shapes:train=>builtin:shapes:test"
  if arg.jsonl:
    c.data.train = f"jsonl:{arg.jsonl}:train"
    c.data.eval = f"jsonl:{arg.jsonl}:test"
    c.data.probe = ""  # a jsonl folder has labels only if its lines carry "label"
    m.vocab_size = 2048
  config_files.demo_schedule(c)  # as clip_tiny
  return c
