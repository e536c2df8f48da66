"""Where a train step's time goes: each part of bench/compare_open_clip.py's tiny models timed
alone (forward + backward unless noted), beside the whole step.

  python bench/step_profile.py [--models=clip,coca] [--batch=64] [--repeats=5]
  python bench/step_profile.py --trace_dir=/tmp/trace   # also a jax.profiler trace of 3 steps

Parts: image tower, text tower (CoCa: unimodal text + multimodal decoder + vocabulary
loss), the contrastive loss, the vocabulary cross-entropy alone (fused and chunked as
trained, and the plain full-logits version for comparison), AdamW's update, the step.
Medians of `--repeats` calls after a warm-up; the last line is one JSON object. The trace
(TensorBoard's profile plugin or xprof) names every XLA op of the step.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

import tiny_spec as spec  # pylint: disable=wrong-import-position
from vlp_jax import families  # pylint: disable=wrong-import-position
from vlp_jax.losses import cross_entropy  # pylint: disable=wrong-import-position
from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from vlp_jax.parallel import sharding  # pylint: disable=wrong-import-position
from vlp_jax.train import optimizer, state as state_lib  # pylint: disable=wrong-import-position
from vlp_jax.train.step import make_train_step  # pylint: disable=wrong-import-position


def timeit(fn, repeats):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def grad_of(fn):
  """jit(grad) of sum(fn(params) * fixed random weights) w.r.t. params."""
  def scalar(params, *args):
    out = fn(params, *args)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))
  return jax.jit(jax.grad(scalar))


def profile(model, batch_size, repeats, trace_dir, overrides):
  config = spec.vlp_config(model, batch_size, overrides)
  family = families.get_family(config, eos_id=spec.EOT)
  mesh = mesh_lib.make_mesh(config.mesh)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  step = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  images, text = spec.make_batch(batch_size)
  batch = {"image": jnp.asarray(images), "tokens": jnp.asarray(spec.vlp_tokens(model, text))}
  params = state.params
  module = family.module
  parts = {}
  parts["image tower"] = grad_of(lambda p, x: module.apply({"params": p}, x,
                                                           method=module.encode_image))
  if model == "clip":
    parts["text tower"] = grad_of(lambda p, t: module.apply({"params": p}, t,
                                                            method=module.encode_text))
    args = {"image tower": (params, batch["image"]), "text tower": (params, batch["tokens"])}
  else:
    def text_side(p, t, context):
      def run(m):
        txt, hidden = m.text_decoder(t, context)
        return txt, m.text_decoder.caption_loss(hidden, t)[0]
      txt, caption = module.apply({"params": p}, method=run)
      return jnp.concatenate([txt.ravel(), caption[None]])
    context = module.apply({"params": params}, batch["image"], method=module.caption_context)
    parts["text decoder + vocabulary loss"] = grad_of(text_side)
    args = {"image tower": (params, batch["image"]),
            "text decoder + vocabulary loss": (params, batch["tokens"], context)}
    w = config.model.text_width
    hidden = jax.random.normal(jax.random.PRNGKey(1), batch["tokens"].shape + (w,))
    kernel = params["text_decoder"]["output"]["kernel"]
    bias = params["text_decoder"]["output"]["bias"]
    labels = batch["tokens"]
    weights = (labels != 0).astype(jnp.float32)

    def plain(h, k, b):
      logp = jax.nn.log_softmax(h @ k + b, axis=-1)
      return -jnp.sum(jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0] * weights)
    parts["vocabulary CE, fused (trained)"] = jax.jit(jax.grad(
        lambda h, k, b: cross_entropy.fused_cross_entropy(h, k, b, labels, weights)[0],
        argnums=(0, 1, 2)))
    parts["vocabulary CE, plain logits"] = jax.jit(jax.grad(plain, argnums=(0, 1, 2)))
    args["vocabulary CE, fused (trained)"] = args["vocabulary CE, plain logits"] = (
        hidden, kernel, bias)

  features = family.features(params, batch, None)
  with sharding.rules_context(), jax.set_mesh(mesh):
    loss_grad = jax.jit(jax.grad(lambda f: family.loss(params, f, mesh)[0]))
    parts["contrastive (+ caption) loss"] = loss_grad
    args["contrastive (+ caption) loss"] = (features,)
    grads = jax.tree.map(jnp.ones_like, params)
    parts["AdamW update"] = jax.jit(
        lambda g, o, p: optax.apply_updates(p, tx.update(g, o, p)[0]))
    args["AdamW update"] = (grads, state.opt_state, params)
    results = {name: timeit(lambda f=fn, a=args[name]: f(*a), repeats)
               for name, fn in parts.items()}

  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics
  results["whole train step"] = timeit(one_step, repeats)
  if trace_dir:
    with jax.profiler.trace(os.path.join(trace_dir, f"{model}_b{batch_size}")):
      for _ in range(3):
        jax.block_until_ready(one_step())
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="clip,coca")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--trace_dir", default="")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="config override on top of tiny_spec.VLP_OPTIONS, e.g. model.scan=False")
  args = parser.parse_args()
  summary = {}
  for model in args.models.split(","):
    results = profile(model, args.batch, args.repeats, args.trace_dir,
                      spec.parse_overrides(args.set))
    total = results["whole train step"]
    print(f"\n{model}, batch {args.batch}: {'part':34} {'ms':>8} {'of step':>8}")
    for name, seconds in results.items():
      print(f"{'':{len(model) + 12}} {name:34} {seconds * 1e3:8.1f} {seconds / total:8.0%}")
      summary[f"{model}/b{args.batch}/{name}/ms"] = seconds * 1e3
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
