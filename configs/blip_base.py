"""BLIP with the paper's ViT-B sizes (ViT-B/16 + a BERT-base text stack serving as unimodal
encoder, image-grounded encoder and decoder); `:variant=tiny` trains on CPU.

  python main.py --config=configs/blip_base.py --mode=describe --devices=64
  python main.py --config=configs/blip_base.py:variant=tiny --workdir=workdirs/blip_tiny
  python main.py --config=configs/blip_base.py:variant=tiny --workdir=workdirs/blip_tiny --mode=caption

Base (Li et al. 2022, sec. 3 and 4.1): ViT-B/16 at 224px, a 12-layer BERT-base text
transformer whose encoder and decoder share all but the self-attention layers, 256-d joint
space, momentum 0.995, queue 57,600, distillation alpha 0.4; pretraining with batch 2,880,
AdamW lr 2e-4 (warm-up 3,000 steps), weight decay 0.05, 20 epochs (of 14M images). The
paper decays the rate by 0.85 per epoch; here it is cosine. Captioning: the paper's nucleus
sampling uses top_p 0.9 (CapFilt), beam search 3 beams for evaluation.
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), scan, remat, jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", scan=True, remat=True, jsonl="")
  if arg.variant == "tiny":
    c = config_files.sibling(__file__, "albef_base").tiny(arg, "blip")
    c.decode.method = "beam"
    c.decode.beam_size = 3
    return c
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  c = config_files.sibling(__file__, "albef_base").base(arg, "blip")
  c.model.image_size = 224
  c.model.text_depth = 12
  c.model.context_length = 40  # BLIP's pretraining truncates at 30 words (plus pieces)
  c.loss.queue_size = 57_600
  c.train.batch_size = 2_880
  c.train.steps = 20 * 4_900  # 20 epochs of 14M images
  c.loss.distill_ramp_steps = 4_900  # BLIP's code ramps alpha over the first epoch too
  c.optim.lr = 2e-4
  c.optim.weight_decay = 0.05
  c.decode.method, c.decode.beam_size = "beam", 3
  return c
