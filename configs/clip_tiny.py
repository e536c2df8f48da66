"""CLIP tiny: a CPU quickstart on the built-in shapes data (the default of `make demo`).

  python main.py --config=configs/clip_tiny.py --workdir=workdirs/clip_tiny
  python main.py --config=configs/clip_tiny.py:jsonl=/path/to/folder --workdir=...

Arguments: `jsonl=FOLDER` trains on FOLDER's captions.jsonl (held-out split for eval) with a
larger vocabulary; `image_size=N` changes the resolution (patches stay 8px).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, jsonl="", image_size=32)
  c = config_lib.base_config()
  c.model.name = "clip"
  c.model.image_size = arg.image_size
  c.model.patch_size = 8
  c.model.vision_width = c.model.text_width = 128
  c.model.vision_depth = c.model.text_depth = 2
  c.model.vision_heads = c.model.text_heads = 4
  c.model.embed_dim = 128
  c.model.vocab_size = 128
  c.model.context_length = 24  # the longest shapes caption is 20 tokens with EOS
  config_files.demo_data(c, arg.jsonl)
  config_files.demo_schedule(c)  # lr_coupled decay as CLIP (PyTorch AdamW), 0.1
  return c
