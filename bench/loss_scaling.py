"""Per-device memory and collective traffic of the contrastive losses at pod scale, measured
by ahead-of-time compilation on simulated CPU devices (no pod needed).

  python bench/loss_scaling.py [--devices=8,64,256] [--local_batch=128,512] [--dim=768]

For every variant (all-gather / ring x softmax / sigmoid), n devices and local batch b, it
compiles forward + backward of the loss alone (embeddings in, gradients out) and reads:
  temp MiB   per-device temporary memory, from compiled.memory_analysis()
  coll MiB   bytes each device sends per step in collectives, from the compiled HLO
             (all-gather / all-reduce / reduce-scatter / collective-permute operand sizes;
             ops inside a loop count once per trip)
The last line is one JSON object mapping `<variant>/b<b>/n<n>` to temporary bytes.
"""
import argparse
import json
import os
import re
import sys
import time

MAX_DEVICES = 256
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={MAX_DEVICES}")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top,wrong-import-position

from vlp_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.losses import contrastive  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {
    "allgather_softmax": (losses.SOFTMAX["allgather"], 1),
    "ring_softmax": (losses.SOFTMAX["ring"], 1),
    "allgather_sigmoid": (losses.SIGMOID["allgather"], 2),
    "ring_sigmoid": (losses.SIGMOID["ring"], 2),
}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "f64": 8}


def shape_bytes(text):
  """Bytes of every array shape like f32[128,768] in an HLO type string."""
  total = 0
  for dtype, dims in re.findall(r"\b(f32|bf16|f16|s32|u32|pred|s64|f64)\[([\d,]*)\]", text):
    size = 1
    for d in filter(None, dims.split(",")):
      size *= int(d)
    total += size * DTYPE_BYTES[dtype]
  return total


def collective_bytes(hlo):
  """Bytes moved by collectives per step, loop bodies multiplied by their trip counts."""
  computations, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = header.group(1)
      computations[current] = []
    elif current:
      computations[current].append(line)
  trips = {}
  for lines in computations.values():
    for line in lines:
      loop = re.search(r"while\(.*body=%?([\w.\-]+)", line)
      if loop:
        count = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        trips[loop.group(1)] = int(count.group(1)) if count else 1
  total = 0
  for name, lines in computations.items():
    for line in lines:
      op = re.search(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
      if op:
        total += shape_bytes(op.group(1)) * trips.get(name, 1)
  return total


def compile_loss(fn, num_scalars, n, b, dim):
  devices = jax.devices()[:n]
  mesh = jax.make_mesh((n,), ("batch",), axis_types=(AxisType.Auto,), devices=devices)
  loss_fn = contrastive.sharded(fn, mesh, ("batch",), num_scalars)
  argnums = tuple(range(2 + num_scalars))
  grad_fn = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], argnums))
  emb = jax.ShapeDtypeStruct((n * b, dim), jnp.float32, sharding=NamedSharding(mesh, P("batch")))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  return grad_fn.lower(emb, emb, *([scalar] * num_scalars)).compile()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="8,64,256")
  parser.add_argument("--local_batch", default="128,512")
  parser.add_argument("--dim", type=int, default=768)
  args = parser.parse_args()
  results = {}
  print(f"{'variant':<18} {'b':>4} {'n':>4} {'temp MiB':>10} {'coll MiB':>10} {'compile s':>10}")
  for name, (fn, num_scalars) in VARIANTS.items():
    for b in map(int, args.local_batch.split(",")):
      for n in map(int, args.devices.split(",")):
        start = time.time()
        compiled = compile_loss(fn, num_scalars, n, b, args.dim)
        temp = compiled.memory_analysis().temp_size_in_bytes
        coll = collective_bytes(compiled.as_text())
        results[f"{name}/b{b}/n{n}"] = int(temp)
        print(f"{name:<18} {b:>4} {n:>4} {temp / 2**20:>10.1f} {coll / 2**20:>10.1f} "
              f"{time.time() - start:>10.1f}", flush=True)
  print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
  main()
