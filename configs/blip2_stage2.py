"""BLIP-2 stage 2: stage 1's Q-Former prompts a frozen decoder LM; captions by generation.

  python main.py --config=configs/blip2_stage2.py:variant=tiny --workdir=workdirs/blip2_s2 \
      --config.model.init_from="workdirs/blip2_s1;workdirs/lm_tiny" \
      --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model
  python main.py --config=configs/blip2_stage2.py:variant=tiny --workdir=workdirs/blip2_s2 \
      --mode=caption --config.data.tokenizer=workdirs/clip_tiny/tokenizer.model

`model.init_from` reads the frozen tower, ln_vision and the Q-Former from stage 1's run,
and the LM from an `lm` run or a GPT-2 / OPT import (python -m vlp_jax.models.import_hf_lm);
the tokenizer is the LM's. Base: configs/blip2_opt2.7b.py (ViT-g, OPT-2.7B).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base: OPT-2.7B, or tiny), jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", jsonl="")
  if arg.variant == "base":
    return config_files.sibling(__file__, "blip2_opt2.7b").get_config()
  if arg.variant != "tiny":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  c = config_files.sibling(__file__, "blip2_stage1").tiny(config_lib.base_config(), arg)
  c.model.name = "blip2_lm"
  lm_tiny = config_files.sibling(__file__, "lm_tiny")
  c.model.lm = lm_tiny.get_config(f"jsonl={arg.jsonl}" if arg.jsonl else None).model.lm
  c.decode.method, c.decode.beam_size = "beam", 3
  return c
