"""VQA fine-tuning of a pretraining run (model.name='vqa', families/vqa.py) on the built-in
shapes questions; the model is the base config's, its parameters the run's.

  python main.py --config=configs/blip_base.py:variant=tiny --workdir=workdirs/blip_tiny
  python main.py --config=configs/vqa.py:base=blip_base,variant=tiny \
      --config.model.init_from=workdirs/blip_tiny --workdir=workdirs/blip_tiny_vqa
  python main.py --config=configs/vqa.py:base=blip_base,variant=tiny,blind \
      --config.model.init_from=workdirs/blip_tiny --workdir=workdirs/blip_tiny_vqa_blind
  python main.py --config=configs/vqa.py:base=blip_base,variant=tiny \
      --workdir=workdirs/blip_tiny_vqa --mode=eval

Arguments: base (a config file beside this one whose family answers questions: blip_base,
coca_base, ...), blind (the question-only baseline: every image replaced by zeros); the
others (variant, scan, ...) go to the base file. vqa.family is the base's model.name, so
the parameter tree is the pretraining run's and `model.init_from` restores all of it.
The tokenizer is the run's too: with data.tokenizer empty, the trainer copies
INIT_FROM/tokenizer.model into the new workdir (train/loop.py inherit_tokenizer); set
data.tokenizer when the pretraining run read another file. `--config.vqa.candidates=train`
ranks the answers of data.train instead of generating them.
"""
from vlp_jax import config_files, config_lib

OWN = dict(base="blip_base", blind=False)  # this file's arguments; the rest are the base's


def split_arg(arg):
  """(this file's items, the base's items) of a `key=value,flag` argument."""
  items = [item for item in (arg or "").split(",") if item]
  own = [item for item in items if item.partition("=")[0] in OWN]
  return ",".join(own), ",".join(item for item in items if item not in own)


def get_config(arg=None):
  own, rest = split_arg(arg)
  a = config_lib.parse_arg(own, **OWN)
  c = config_files.sibling(__file__, a.base).get_config(rest or None)
  c.vqa.family, c.model.name = c.model.name, "vqa"
  c.vqa.blind = a.blind
  c.data.train, c.data.eval = "builtin:shapes_vqa:train", "builtin:shapes_vqa:test"
  c.data.probe = ""
  c.data.augment = "none"  # questions say left of and above: no crops that move shapes out
  if "variant=tiny" in rest.split(","):
    tiny_schedule(c)
  else:
    # BLIP's VQA fine-tuning: AdamW lr 2e-5, weight decay 0.05, batch 256 (8 x 32).
    c.train.batch_size, c.optim.lr, c.optim.weight_decay = 256, 2e-5, 0.05
    c.train.steps, c.optim.warmup_steps = 10_000, 500
  return c


def tiny_schedule(c):
  """Fine-tuning on CPU: half of pretraining's 600 steps at a third of its rate. Answers of
  shapes are one word, at most 5 pieces of the tiny tokenizer (trained on captions, which
  never say "none") and EOS, leaving the question 18 of 24 tokens (longer ones lose their
  end: "... object?")."""
  config_files.demo_schedule(c)
  c.vqa.answer_length = 6
  c.train.steps = 300
  c.train.checkpoint_every = 100
  c.train.log_every = 20
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 20
