"""vlp_jax against open_clip on this machine: train-step speed, FLOP utilisation, memory.

  pip install -e .[bench]     # torch 2.13.0 (CPU) and open_clip_torch, no weights
  python bench/compare_open_clip.py [--models=clip,coca] [--batches=64,128] [--repeats=5]

One spec, both codebases (the performance issue's "tiny" models):
  CLIP  64x64 images, patch 8, ViT width 256 x 6 layers x 4 heads; text context 32, vocab
        32,000, width 256 x 6 layers x 4 heads, causal, pooled at end-of-text; joint 256;
        QuickGELU; float32; AdamW; softmax InfoNCE (open_clip's ClipLoss).
  CoCa  the same towers plus a 3-layer multimodal decoder of width 256 and the untied
        256 x 32,000 vocabulary head; open_clip's CoCa without attentional pooling (class
        token embedding, the decoder attends to the 64 patch tokens) and its decoder layer
        (self-attention, MLP, cross-attention, MLP); loss 1 x InfoNCE + 2 x caption CE
        (open_clip's CoCaLoss); vlp_jax with model.coca_pooling=cls,
        model.multimodal_layer=open_clip.
vlp_jax runs the spec with tiny_spec.VLP_OPTIONS (layers under scan, each block
rematerialised keeping its weight matmuls); `--set=model.scan=False` (repeatable) overrides.
Captions are 5-29 tokens padded to 32, as real ones are: vlp_jax's vocabulary loss skips
the padding (the same loss); FLOPs and MFU count the full spec for both.
Steps:
  1. Parity: open_clip's randomly initialised tiny CLIP is copied into vlp_jax's model
     (vlp_jax.models.import_open_clip) and both must give the same image and text
     embeddings and loss on one batch (float32, rtol 1e-4), or the benchmark stops.
  2. The machine's float32 matmul peak (N=2048, best of jax and torch).
  3. Per model and batch size, one worker process per implementation (so max RSS is
     that implementation's own), each warmed up, then timed alternately: `--repeats`
     rounds of `--steps` full train steps (forward, loss, backward, AdamW) each.
     Reported: samples/s (median and min-max over rounds), model-FLOPs utilisation against
     the peak, max RSS of the worker (whole process, imports included), and the CPU time
     other processes used while each side ran (this machine is shared).
FLOPs per sample are counted one way for both (`model_flops`: 6 x dense parameters x
positions + 12 x positions^2 x width per attention layer, the vocabulary head included),
and the vlp_jax count is cross-checked against XLA's cost analysis of its compiled step.
XLA's count comes from a separate process compiling the step unrolled (scan and the
vocabulary loss's chunk loop each count one iteration there).
The last line is one JSON object: `clip/b64/speed_ratio`, ..., `coca/b128/memory_ratio`
(vlp_jax / open_clip) and the measured figures.

open_clip imports torchvision, whose PyPI build does not load beside the CPU torch here
("operator torchvision::nms does not exist"); `import_open_clip.open_clip_package` then
imports open_clip's model and loss modules with a placeholder torchvision (no torchvision
op is used by these models).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workers  # pylint: disable=wrong-import-position
from workers import Worker, matmul_peak, max_rss_mib, reply, serve, timed  # pylint: disable=wrong-import-position
from tiny_spec import (EOT, LR, WEIGHT_DECAY, make_batch, model_flops,  # pylint: disable=wrong-import-position
                       VLP_OPTIONS, open_clip_model, parse_overrides, vlp_config,
                       vlp_tokens)


# ----------------------------------------------------------------------------- workers


def jax_worker(model, batch_size, warmup, overrides):
  workers.jax_worker(lambda: vlp_train_step(model, batch_size, overrides) + ({},), batch_size,
                     warmup)


def vlp_train_step(model, batch_size, overrides):
  """The trainer's jitted step for the spec, a fresh state and the benchmark batch."""
  config = vlp_config(model, batch_size, overrides)
  images, text = make_batch(batch_size)
  step, state, _, batch = workers.trainer_step(
      config, EOT, {"image": images, "tokens": vlp_tokens(model, text)})
  return step, state, batch


def flops_worker(models):
  """XLA's cost analysis of each model's train step, per sample (batch 16), compiled
  unrolled and without remat: XLA counts a loop body once, whatever its trip count."""
  import jax

  result, batch_size = {}, 16
  for model in models:
    step, state, batch = vlp_train_step(model, batch_size,
                                        {"model.scan": False, "model.remat": False})
    cost = step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    result[model] = cost["flops"] / batch_size if cost and "flops" in cost else None
    del state
    jax.clear_caches()
  reply(xla_flops_per_sample=result)


def torch_worker(model, batch_size, warmup):
  import numpy as np
  import torch

  rss_imports = max_rss_mib()
  a = torch.from_numpy(np.random.default_rng(0).standard_normal((2048, 2048), np.float32))
  torch.mm(a, a)
  peak = matmul_peak(lambda x=a: torch.mm(x, x))
  del a

  net, loss_fn = open_clip_model(model)
  decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "embedding" not in n
           and "cls_emb" not in n]
  no_decay = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and "embedding" not in n
                                                           and "cls_emb" not in n)]
  opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                           {"params": decay, "weight_decay": WEIGHT_DECAY}], lr=LR)
  images, text = make_batch(batch_size)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  text = torch.from_numpy(text).long()

  def run_step():
    opt.zero_grad(set_to_none=True)
    out = net(images, text)
    if model == "clip":
      loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    else:
      losses = loss_fn(out["image_features"], out["text_features"], out["logits"],
                       out["labels"], out["logit_scale"])
      loss = sum(losses)
    loss.backward()
    opt.step()

  t0 = time.perf_counter()
  run_step()
  first = time.perf_counter() - t0
  for _ in range(warmup):
    run_step()
  serve(run_step, dict(peak_gflops=peak, rss_imports_mib=rss_imports, first_step_s=first,
                       threads=torch.get_num_threads()))


def parity_worker(out_path):
  """open_clip's tiny CLIP copied into vlp_jax: embeddings and loss must agree."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from vlp_jax import families
  from vlp_jax.models import import_open_clip
  from vlp_jax.parallel import mesh as mesh_lib
  from vlp_jax.parallel import sharding

  net, loss_fn = open_clip_model("clip")
  state_dict = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  np.savez(out_path, **state_dict)
  images, text = make_batch(16, seed=1)
  with torch.no_grad():
    out = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
              torch.from_numpy(text).long())
    ref_loss = float(loss_fn(out["image_features"], out["text_features"], out["logit_scale"]))

  config = vlp_config("clip", 16)
  family = families.get_family(config, eos_id=EOT)
  params = import_open_clip.clip_params(import_open_clip.load_state_dict(out_path),
                                        config.model)
  img = np.asarray(family.encode_image(params, jnp.asarray(images)))
  txt = np.asarray(family.encode_text(params, jnp.asarray(text)))
  mesh = mesh_lib.make_mesh(config.mesh)
  with sharding.rules_context(), jax.set_mesh(mesh):
    loss, _ = family.loss(params, {"img": jnp.asarray(img), "txt": jnp.asarray(txt)}, mesh)

  def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
  errors = {"image_embedding": rel(img, out["image_features"].numpy()),
            "text_embedding": rel(txt, out["text_features"].numpy()),
            "loss": abs(float(loss) - ref_loss) / abs(ref_loss)}
  reply(errors=errors, loss_vlp_jax=float(loss), loss_open_clip=ref_loss,
        params=int(sum(v.size for v in state_dict.values())))


# ----------------------------------------------------------------------------- driver


def compare(model, batch_size, args):
  flops = model_flops(model)
  workers = {"vlp_jax": Worker(
      __file__, "--worker=jax", f"--model={model}", f"--batch={batch_size}",
                               f"--warmup={args.warmup}", *(f"--set={s}" for s in args.set))}
  info = {"vlp_jax": workers["vlp_jax"].read()}  # one at a time: compiles do not overlap
  workers["open_clip"] = Worker(
      __file__, "--worker=torch", f"--model={model}", f"--batch={batch_size}",
                                f"--warmup={args.warmup}")
  info["open_clip"] = workers["open_clip"].read()
  rates = {name: [] for name in workers}
  other = {name: [] for name in workers}
  for r in range(args.repeats):
    order = list(workers) if r % 2 == 0 else list(workers)[::-1]
    for name in order:
      seconds, busy = timed(workers[name], args.steps)
      rates[name].append(args.steps * batch_size / seconds)
      other[name].append(busy)
  rss = {name: w.close()["max_rss_mib"] for name, w in workers.items()}
  rows = {}
  for name in workers:
    rows[name] = dict(samples_per_s=statistics.median(rates[name]), min=min(rates[name]),
                      max=max(rates[name]), max_rss_mib=rss[name],
                      rss_imports_mib=info[name]["rss_imports_mib"],
                      first_step_s=info[name]["first_step_s"],
                      peak_gflops=info[name]["peak_gflops"],
                      other_cores=statistics.median(other[name]))
  return rows, flops


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="clip,coca")
  parser.add_argument("--batches", default="64,128")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3, help="train steps per timed round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--skip_parity", action="store_true")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="vlp_jax config override on top of tiny_spec.VLP_OPTIONS, "
                      "e.g. --set=model.scan=False")
  parser.add_argument("--worker", choices=("jax", "torch", "parity", "flops"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--model", help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == "jax":
    return jax_worker(args.model, args.batch, args.warmup, parse_overrides(args.set))
  if args.worker == "torch":
    return torch_worker(args.model, args.batch, args.warmup)
  if args.worker == "parity":
    return parity_worker(args.out)
  if args.worker == "flops":
    return flops_worker(args.models.split(","))

  summary = {}
  if not args.skip_parity:
    with tempfile.TemporaryDirectory() as tmp:
      parity = Worker(
          __file__, "--worker=parity", f"--out={os.path.join(tmp, 'open_clip_tiny.npz')}")
      result = parity.read()
      parity.proc.stdin.close()
      parity.proc.wait()
    errors = result["errors"]
    print(f"parity (open_clip weights in vlp_jax, {result['params']:,} params): max relative "
          "error " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    if max(errors.values()) > 1e-4:
      sys.exit(f"parity check failed: {errors}")
    summary.update({f"parity/{k}": v for k, v in errors.items()})

  counter = Worker(__file__, "--worker=flops", f"--models={args.models}")
  xla_flops = counter.read()["xla_flops_per_sample"]
  counter.proc.stdin.close()
  counter.proc.wait()
  for model, value in xla_flops.items():
    print(f"{model}: FLOPs per sample, model count {model_flops(model) / 1e9:.3f} G, XLA's "
          f"cost analysis (unrolled; each loop body counted once) {value / 1e9:.3f} G")
    summary[f"{model}/xla_gflops_per_sample"] = value / 1e9
  options = {**VLP_OPTIONS, **parse_overrides(args.set)}
  print("vlp_jax options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
  summary["vlp_jax_options"] = options
  header = (f"{'model':5} {'batch':>5} {'impl':9} {'samples/s':>9} {'min-max':>11} "
            f"{'MFU':>5} {'RSS MiB':>8} {'imports':>8} {'1st step':>8} {'others':>6}")
  lines = [header]
  peak = 0.0
  for model in args.models.split(","):
    for b in (int(x) for x in args.batches.split(",")):
      rows, flops = compare(model, b, args)
      peak = max([peak] + [r["peak_gflops"] for r in rows.values()])
      for name, r in rows.items():
        mfu = r["samples_per_s"] * flops / 1e9 / peak
        lines.append(f"{model:5} {b:5d} {name:9} {r['samples_per_s']:9.1f} "
                     f"{r['min']:5.1f}-{r['max']:5.1f} {mfu:5.0%} {r['max_rss_mib']:8.0f} "
                     f"{r['rss_imports_mib']:8.0f} {r['first_step_s']:7.1f}s "
                     f"{r['other_cores']:6.2f}")
        summary[f"{model}/b{b}/{name}/samples_per_s"] = r["samples_per_s"]
        summary[f"{model}/b{b}/{name}/mfu"] = mfu
        summary[f"{model}/b{b}/{name}/max_rss_mib"] = r["max_rss_mib"]
      ours, theirs = rows["vlp_jax"], rows["open_clip"]
      summary[f"{model}/b{b}/speed_ratio"] = ours["samples_per_s"] / theirs["samples_per_s"]
      summary[f"{model}/b{b}/memory_ratio"] = ours["max_rss_mib"] / theirs["max_rss_mib"]
      summary[f"{model}/model_gflops_per_sample"] = flops / 1e9
      print(lines[-2], lines[-1], sep="\n", flush=True)
  summary["peak_gflops"] = peak
  print("\n" + "\n".join(lines))
  print(f"peak float32 matmul {peak:.0f} GFLOP/s; MFU = samples/s x model FLOPs per sample "
        "(" + ", ".join(f"{m} {model_flops(m) / 1e9:.3f} GFLOP" for m in
                        args.models.split(",")) + ") / peak; 'others' = cores other "
        "processes used while timed")
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
