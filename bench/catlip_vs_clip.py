"""CatLIP against CLIP with the same image tower: train samples/s here, and the collective
bytes per step of the compiled step at pod scale.

  python bench/catlip_vs_clip.py [--batch=128] [--repeats=5] [--steps=3] [--pod_devices=256]

Speed: bench/tiny_spec.py's image tower (64px, patch 8, width 256, 6 layers; scan + remat
dots) for both; CLIP adds its 6-layer text tower of width 256 on 32-token captions, CatLIP a
linear head over --labels synset rows. Synthetic batches, one process, the two steps timed
in alternation (--repeats rounds of --steps steps each, after a warm-up step); rows show the
median samples/s [min-max] over rounds. Pod: `bench/collectives.py` on clip_b16 and
catlip_b16 (the same ViT-B/16 tower) for --pod_devices simulated devices, pure FSDP, one
example per device, in subprocesses; their total bytes per device per step. Last line: one
JSON object.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _configs(batch, labels):
  import tiny_spec  # pylint: disable=g-import-not-at-top
  clip = tiny_spec.vlp_config("clip", batch)
  catlip = tiny_spec.vlp_config("clip", batch)
  catlip.model.name = "catlip"
  catlip.model.vocab_size = labels
  return {"clip": clip, "catlip": catlip}


def _step(config):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tiny_spec  # pylint: disable=g-import-not-at-top
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import optimizer, state as state_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh(config.mesh)
  family = families.get_family(config)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  step = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  images, text = tiny_spec.make_batch(config.train.batch_size)
  if config.model.name == "catlip":
    rng = np.random.default_rng(0)
    labels = (rng.random((len(images), config.model.vocab_size)) < 5 / config.model.vocab_size)
    batch = {"image": images, "labels": labels.astype(np.uint8)}
  else:
    batch = {"image": images, "tokens": text}
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  holder = {"state": state}

  def run(steps):
    for _ in range(steps):
      holder["state"], m = step(holder["state"], batch)
    jax.block_until_ready(m)
  return run


def _pod_bytes(config, devices):
  cmd = [sys.executable, os.path.join(ROOT, "bench", "collectives.py"), f"--config={config}",
         f"--devices={devices}", f"--mesh=fsdp={devices}", f"--batch={devices}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--labels", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--pod_devices", type=int, default=256)
  args = parser.parse_args()
  runs = {name: _step(c) for name, c in _configs(args.batch, args.labels).items()}
  rates = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run(args.steps)
      rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
  summary = {}
  print(f"{'family':<8} {'samples/s':<24}")
  for name, values in rates.items():
    med = statistics.median(values)
    summary[f"{name}/samples_per_s"] = round(med, 1)
    print(f"{name:<8} {med:7.1f} [{min(values):.1f}-{max(values):.1f}]")
  summary["catlip_over_clip"] = round(summary["catlip/samples_per_s"] /
                                      summary["clip/samples_per_s"], 3)
  print(f"CatLIP / CLIP: {summary['catlip_over_clip']:.2f}x (batch {args.batch})")
  if args.pod_devices:
    for name, config in (("clip", "configs/clip_b16.py"), ("catlip", "configs/catlip_b16.py")):
      pod = _pod_bytes(config, args.pod_devices)
      summary[f"{name}/pod_collective_bytes"] = pod["total/bytes"]
      print(f"{name:<8} ViT-B/16 on {args.pod_devices} devices: "
            f"{pod['total/bytes'] / 2**20:,.1f} MiB of collectives per device per step")
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
