"""AdamW with warmup + cosine, weight decay on matrices only, global-norm clipping.

Weight decay comes in the two conventions that papers use (config.optim.weight_decay_mode):
- lr_coupled: w -= lr(t) * wd * w, as PyTorch's and optax's AdamW (CLIP's wd 0.2).
- decoupled: w -= wd * schedule(t) * w with schedule(t) = lr(t) / lr, independent of the
  base learning rate, as big_vision and the AdamW paper (SigLIP's wd 1e-4, CoCa's 0.01).
The same number means very different decay: SigLIP's 1e-4 taken as lr_coupled with lr 1e-3
would decay 1e-7 per step instead of 1e-4.
"""
import flax
import optax

WEIGHT_DECAY_MODES = ("decoupled", "lr_coupled")


def decays(name):
  """Weight decay applies to dense/conv/attention kernels only: not to biases, norms, the
  temperature, token/position embeddings or learned tokens (all named otherwise)."""
  return name == "kernel" or name.endswith("_kernel")


def schedule(o, total_steps):
  if o.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)), optax.constant_schedule(o.lr)],
        [o.warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
      decay_steps=max(total_steps, o.warmup_steps + 1), end_value=o.lr * o.min_lr_ratio)


def decay_mask(params):
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: decays(path[-1]) for path in flat})


def make(config):
  """The optax transformation and its learning-rate schedule, from `config.optim`."""
  o = config.optim
  lr = schedule(o, config.train.steps)
  parts = []
  if o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  if o.weight_decay_mode == "lr_coupled":
    parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=decay_mask))
  elif o.weight_decay_mode == "decoupled":
    # After the learning rate: updates = -lr(t) * adam - wd * lr(t) / lr * w.
    parts += [optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
              optax.scale_by_learning_rate(lr)]
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(lambda t: -o.weight_decay * lr(t) / o.lr,
                                             mask=decay_mask))
  else:
    raise ValueError(f"Config field 'optim.weight_decay_mode': {o.weight_decay_mode!r} is not "
                     f"one of {WEIGHT_DECAY_MODES}")
  return optax.chain(*parts), lr


def global_norm(tree):
  return optax.tree.norm(tree)
