"""A tiny GPT-style language model trained on captions alone: the "pretrained LM" of the
BLIP-2 and prefix-captioning chains on CPU (README: BLIP-2).

  python main.py --config=configs/lm_tiny.py --workdir=workdirs/lm_tiny \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model

Reads the captions of data.train (the built-in shapes by default; `jsonl=FOLDER` for a
folder's captions.jsonl). Its position table (model.lm.positions) leaves room for the soft
prompt the captioners put in front of a caption.
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, jsonl="")
  c = config_lib.base_config()
  m = c.model
  m.name = "lm"
  m.vocab_size = 128
  m.context_length = 24  # as clip_tiny
  m.lm.width, m.lm.depth, m.lm.heads = 128, 2, 4
  m.lm.positions = 64
  config_files.demo_data(c, arg.jsonl)
  c.data.eval = "builtin:shapes:test"  # held-out perplexity
  config_files.demo_schedule(c)
  return c
