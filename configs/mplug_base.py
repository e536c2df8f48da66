"""mPLUG with the base model's sizes (ViT-B/16, 6 text-encoder layers, 6 fusion layers in
the skip-connected network, a 12-layer decoder); `:variant=tiny` trains on CPU.

  python main.py --config=configs/mplug_base.py --mode=describe --devices=64
  python main.py --config=configs/mplug_base.py:variant=tiny --workdir=workdirs/mplug_tiny

Sources: the paper (Li et al. 2022, "mPLUG", sec. 3 and 4.1; notes in ../shared/seeds): text
encoder and skip-connected network of 6 layers each, initialised from BERT-base's first and
last 6, a 12-layer decoder, CLIP's ViT-B/16; 14M pairs, batch 1,024, 30 epochs, ITC / ITM /
MLM / prefix LM; it picks S for speed (its figure 3). The released code (AliceMind
mPLUG/configs, read for the sizes): pretrain_mplug_base.yaml has image_res 256, embed_dim
256, queue 65,536, momentum 0.995, alpha 0.4, mlm 0.15, AdamW lr 1e-4, weight decay 0.02,
and its BERT config's stride_layer 3 makes 1 of the 6 fusion layers connected (the 4th).
Blocks of S asymmetric + 1 connected layers cannot put it 4th; S=5, N=1 keeps the 6 layers
and the one connected layer (last). README (AliceMind): mplug.en.base has 350M parameters.
The ViT here has the fusion families' layout (patch bias, no LayerNorm before the blocks),
not CLIP's; the tokenizer is trained on your captions (BERT's uncased vocabulary: 30,522).
"""
from vlp_jax import config_files, config_lib


def get_config(arg=None):
  """Arguments: variant (base or tiny), scan, remat, jsonl=FOLDER (tiny)."""
  arg = config_lib.parse_arg(arg, variant="base", scan=True, remat=True, jsonl="")
  albef = config_files.sibling(__file__, "albef_base")
  if arg.variant == "tiny":
    c = albef.tiny(arg, "mplug")
    c.model.fusion_s, c.model.fusion_n, c.model.decoder_depth = 1, 1, 2
    c.decode.method, c.decode.beam_size = "beam", 3
    return c
  if arg.variant != "base":
    raise ValueError(f"Unknown variant {arg.variant!r} (base or tiny)")
  c = albef.base(arg, "mplug")
  c.model.image_size = 256
  c.model.text_depth = 6
  c.model.fusion_s, c.model.fusion_n = 5, 1
  c.model.decoder_depth = 12
  c.model.context_length = 32
  c.loss.queue_size = 65_536
  c.train.batch_size = 1_024
  c.train.steps = 30 * 13_700  # 30 epochs of 14M pairs
  c.loss.distill_ramp_steps = 13_700  # one epoch, as ALBEF's code that mPLUG's follows
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.02
  c.decode.method, c.decode.beam_size = "beam", 3
  return c
