"""SigLIP tiny: clip_tiny's towers and data with the pairwise sigmoid loss (CPU quickstart).

  python main.py --config=configs/siglip_tiny.py --workdir=workdirs/siglip_tiny
  python main.py --config=configs/siglip_tiny.py:ring=True --workdir=...  # ring-chunked loss

Only the objective differs from clip_tiny, so the two compare objectives fairly. The
temperature starts at t = 10 (t' = log 10) and the bias at -10, uncapped, as in SigLIP.
Arguments: those of clip_tiny (jsonl=FOLDER, image_size=N) and ring (bool).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, jsonl="", image_size=32, ring=False)
  c = config_files.sibling(__file__, "clip_tiny").get_config(f"jsonl={arg.jsonl},image_size={arg.image_size}")
  c.model.name = "siglip"
  c.model.logit_scale_init = 10.0
  c.model.logit_scale_max = 0.0
  c.model.logit_bias_init = -10.0
  c.loss.contrastive = "ring" if arg.ring else "allgather"
  return c
