"""BLIP-2 ViT-g OPT-2.7B, stage 2 (Li et al. 2023): the paper's setting at pod scale.

  python main.py --config=configs/blip2_opt2.7b.py --mode=describe --devices=256

Frozen: EVA ViT-g/14 (without its last layer, ~1.0B) and OPT-2.7B (32 layers of width 2560,
ReLU, 2,048 positions after OPT's 2 offset rows, tied head; vocabulary 50,272 + our padding
row), stored in bfloat16; trained: ln_vision, the Q-Former's query path (the paper counts
188M for the whole Q-Former with its text weights, which stage 2 does not hold) and the
projection to the LM. Batch 1,920, 80k steps, AdamW as stage 1 (lr 1e-4 -> 5e-5 cosine,
weight decay 0.05). Weights: `model.init_from="STAGE1_RUN;OPT_IMPORT"` with the OPT import
from python -m vlp_jax.models.import_hf_lm, whose tokenizer folder is data.tokenizer.
"""
from vlp_jax import config_files


def get_config(arg=None):
  del arg
  stage1 = config_files.sibling(__file__, "blip2_stage1")
  c = stage1.get_config("variant=base")
  m = c.model
  m.name = "blip2_lm"
  m.vocab_size = 50_273  # OPT's 50,272 embedding rows + our padding id 0
  m.context_length = 32
  m.lm.width, m.lm.depth, m.lm.heads = 2560, 32, 32
  m.lm.mlp_ratio = 4.0
  m.lm.activation = "relu"
  m.lm.positions, m.lm.position_offset = 2048, 2
  m.lm.tied = True
  m.frozen_dtype = "bfloat16"
  c.train.batch_size = 1_920
  c.train.steps = 80_000
  return c
