"""A tiny GPT-style language model trained on captions alone: the "pretrained LM" of the
BLIP-2 and prefix-captioning chains on CPU (README: BLIP-2).

  python main.py --config=configs/lm_tiny.py --workdir=workdirs/lm_tiny \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model

Reads the captions of data.train (the built-in shapes by default; `jsonl=FOLDER` for a
folder's captions.jsonl). Its position table (model.lm.positions) leaves room for the soft
prompt the captioners put in front of a caption.
"""
from vlp_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, jsonl="")
  c = config_lib.base_config()
  m = c.model
  m.name = "lm"
  m.vocab_size = 128
  m.context_length = 24  # as clip_tiny
  m.lm.width, m.lm.depth, m.lm.heads = 128, 2, 4
  m.lm.positions = 64
  c.data.train = "builtin:shapes:train"
  c.data.eval = ""
  if arg.jsonl:
    c.data.train = f"jsonl:{arg.jsonl}:train"
    m.vocab_size = 2048
  c.train.batch_size = 128
  c.train.steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay_mode = "lr_coupled"
  return c
