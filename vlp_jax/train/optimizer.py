"""AdamW with warmup + cosine, decoupled weight decay on matrices only, global-norm clipping."""
import flax
import optax


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
  parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts), lr


def global_norm(tree):
  return optax.tree.norm(tree)
