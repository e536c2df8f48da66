"""What config files share beyond config_lib's fields: loading a sibling config file, and
the CPU demo's data and schedule that every tiny variant uses."""
import importlib.util
import os


def sibling(config_file, name):
  """The config file `name`.py beside `config_file` as a module: configs that build on
  another (BLIP on ALBEF, BLIP-2 stage 2 on stage 1) load it by path, as main.py does."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def demo_data(c, jsonl=""):
  """The CPU demo's data: the built-in shapes, or a jsonl folder's train and held-out
  splits with a larger vocabulary."""
  c.data.train, c.data.eval = "builtin:shapes:train", "builtin:shapes:test"
  if jsonl:
    c.data.train, c.data.eval = f"jsonl:{jsonl}:train", f"jsonl:{jsonl}:test"
    c.model.vocab_size = 2048


def demo_schedule(c):
  """The CPU demo's training: 600 steps of 128 examples, lr 1e-3 after 50 warm-up steps,
  PyTorch-style AdamW decay 0.1 (the papers' decoupled values would shrink the weights of
  so short a run too much)."""
  c.train.batch_size = 128
  c.train.steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay_mode = "lr_coupled"
