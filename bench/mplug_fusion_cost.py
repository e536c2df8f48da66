"""What mPLUG's skip-connected fusion buys (issue 16, item 4): parameters, forward matmul
FLOPs and forward+backward time of three fusion networks of the same depth on ViT-B/16
image tokens at 224px (197 tokens) and 384px (577 tokens).

  python bench/mplug_fusion_cost.py [--depth=6] [--splits=2x2,5x1] [--repeats=7] [--steps=2]

Networks, all BERT-base layers (width 768, 12 heads, MLP 3072, post-LayerNorm
fusion.TextLayer) on 40 text tokens, `--depth` fusion layers each:
  (a) skip-connected (models/mplug.py): N blocks of S asymmetric layers (text only: self-
      attention, cross-attention to the image, MLP) + 1 connected layer over [image; text],
      N * (S + 1) = depth; one row per SxN in --splits. The seed notes say the skip-
      connected network has 6 layers and that the paper pretrains with S=6, which no
      N * (S + 1) = 6 satisfies, so the default shows S=2,N=2 and S=5,N=1.
  (b) connected everywhere: every layer a TextLayer over [image; text] (single stream, as
      ViLT/UNITER).
  (c) two-stream co-attention (ViLBERT/METER style, `CoAttention` below): each layer a text
      TextLayer with cross-attention to the image and an image TextLayer with cross-attention
      to the text, both reading the previous layer's outputs.

FLOPs: describe.matmul_flops of the forward jaxpr at batch 1 (dots only, 2 per multiply-
add). Time: jit(value_and_grad) w.r.t. the parameters and both inputs of the sum of both
outputs, float32, at --batch224/--batch384; all networks of a resolution run in alternation
for --repeats rounds of --steps steps after a compile + warm-up step. Rows give the median
ms per step [min-max]; time ratios to (a) are medians of the per-round ratios. Text has no
padding (the cost does not depend on it). The
CPU family, a measured float32 matmul peak and the CPU other processes used while timing
(from /proc/stat minus this process) are printed with it. Last line: one JSON object.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from vlp_jax.models import fusion, mplug  # pylint: disable=wrong-import-position
from vlp_jax.train import describe  # pylint: disable=wrong-import-position

WIDTH, HEADS, MLP, TEXT_LEN = 768, 12, 3072, 40
IMAGE_TOKENS = {224: 197, 384: 577}  # ViT-B/16: (px / 16)^2 patches + class token


class Connected(nn.Module):
  """(b): `depth` TextLayers over [image; text], i.e. a single-stream encoder."""
  depth: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, image, text, ids):
    n = image.shape[1]
    keys = jnp.concatenate([jnp.ones(image.shape[:2], bool), ids != fusion.PAD_ID], axis=1)
    x = jnp.concatenate([image, text], axis=1)
    for i in range(self.depth):
      x, _ = fusion.TextLayer(self.num_heads, self.mlp_dim, name=f"layer_{i}")(
          x, keys[:, None, None, :])
    return x[:, :n], x[:, n:]


class CoAttention(nn.Module):
  """(c): `depth` two-stream layers; each side self-attends, cross-attends to the other
  side's input to this layer, then its MLP, so the image tokens are updated every layer."""
  depth: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, image, text, ids):
    text_mask = fusion.padding_mask(ids)
    layer = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, cross_attention=True)
    for i in range(self.depth):
      new_text, _ = fusion.TextLayer(name=f"text_{i}", **layer)(text, text_mask, image)
      image, _ = fusion.TextLayer(name=f"image_{i}", **layer)(image, None, text)
      text = new_text
    return image, text


def networks(depth, splits, width=WIDTH, heads=HEADS, mlp=MLP):
  """{name: module} of (a) per split, (b) and (c)."""
  nets = {}
  for s, n in splits:
    if n * (s + 1) != depth:
      raise ValueError(f"S={s}, N={n} gives {n * (s + 1)} layers, not --depth={depth}")
    nets[f"a skip S={s},N={n}"] = mplug.SkipConnectedFusion(
        num_blocks=n, asymmetric_layers=s, num_heads=heads, mlp_dim=mlp)
  nets["b connected"] = Connected(depth, heads, mlp)
  nets["c co-attention"] = CoAttention(depth, heads, mlp)
  return nets


def key_of(name):
  """JSON key of a network's display name: a_s2n2, b_connected, c_coattention."""
  if name.startswith("a "):
    s, n = (part.split("=")[1] for part in name.split()[-1].split(","))
    return f"a_s{s}n{n}"
  return name.replace(" ", "_").replace("-", "")


def inputs(batch, image_tokens, text_len=TEXT_LEN, width=WIDTH, seed=0):
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.normal(size=(batch, image_tokens, width)), jnp.float32)
  text = jnp.asarray(rng.normal(size=(batch, text_len, width)), jnp.float32)
  ids = jnp.asarray(rng.integers(1, 1000, size=(batch, text_len)), jnp.int32)
  return image, text, ids


def param_count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def abstract_params(module, image_tokens, text_len=TEXT_LEN, width=WIDTH):
  """Parameter shapes without running init (eager init of BERT-base layers takes seconds)."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                            *inputs(1, image_tokens, text_len, width)))


def forward_flops(module, params, image_tokens, text_len=TEXT_LEN, width=WIDTH):
  """Matmul FLOPs of one example's forward pass, from the jaxpr (params may be abstract)."""
  image, text, ids = inputs(1, image_tokens, text_len, width)
  jaxpr = jax.make_jaxpr(lambda p: module.apply(p, image, text, ids))(params)
  return describe.matmul_flops(jaxpr.jaxpr)


def step_fn(module):
  """jit(value_and_grad) of the sum of both outputs w.r.t. params, image and text."""
  def loss(params, image, text, ids):
    out_image, out_text = module.apply(params, image, text, ids)
    return jnp.sum(out_image) + jnp.sum(out_text)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def matmul_peak(n=2048, repeats=5):
  """GFLOP/s of a jitted float32 n x n matmul (best of `repeats`)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


def cpu_family():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu family"):
          return line.split(":")[1].strip()
  except OSError:
    pass
  return "?"


def busy_cpu_seconds():
  """(all CPUs' busy seconds from /proc/stat, this process's CPU seconds)."""
  with open("/proc/stat") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  tick = os.sysconf("SC_CLK_TCK")
  own = os.times()
  return (sum(fields[:8]) - idle) / tick, own.user + own.system


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=6)
  parser.add_argument("--splits", default="2x2,5x1", help="SxN of (a), comma-separated")
  parser.add_argument("--resolutions", default="224,384")
  parser.add_argument("--batch224", type=int, default=4)
  parser.add_argument("--batch384", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--steps", type=int, default=2)
  args = parser.parse_args()
  splits = [tuple(int(v) for v in s.split("x")) for s in args.splits.split(",")]
  nets = networks(args.depth, splits)
  refs = [name for name in nets if name.startswith("a ")]
  resolutions = [int(r) for r in args.resolutions.split(",")]
  batch = {224: args.batch224, 384: args.batch384}
  t_start = time.perf_counter()

  rows, steps = {}, {}
  for res in resolutions:
    tokens = IMAGE_TOKENS[res]
    data = inputs(batch[res], tokens)
    for name, module in nets.items():
      params = jax.jit(module.init)(jax.random.PRNGKey(0), *inputs(1, tokens))
      fn = step_fn(module)
      jax.block_until_ready(fn(params, *data))  # compile + warm-up
      steps[res, name] = (fn, params, data)
      rows[res, name] = {"params": param_count(params),
                         "flops": forward_flops(module, params, tokens), "ms": []}
  peak = matmul_peak()

  busy0, own0 = busy_cpu_seconds()
  t0 = time.perf_counter()
  for _ in range(args.repeats):
    for res in resolutions:
      for name in nets:
        fn, params, data = steps[res, name]
        start = time.perf_counter()
        for _ in range(args.steps):
          out = fn(params, *data)
        jax.block_until_ready(out)
        rows[res, name]["ms"].append((time.perf_counter() - start) / args.steps * 1e3)
  busy1, own1 = busy_cpu_seconds()
  other_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (time.perf_counter() - t0)

  print(f"CPU family {cpu_family()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"float32 matmul peak {peak:.0f} GFLOP/s; other processes used {other_cores:.2f} "
        f"cores on average while timing")
  print(f"depth {args.depth}, width {WIDTH}, {HEADS} heads, MLP {MLP}, text {TEXT_LEN} tokens; "
        f"ms = forward+backward step, median [min-max] of {args.repeats} interleaved rounds\n")
  ref_cols = " | ".join(f"FLOPs / {r[2:]} | time / {r[2:]}" for r in refs)
  print(f"| network | px (img tokens) | batch | params (M) | fwd GFLOP/example | ms/step | "
        f"{ref_cols} |")
  print("|" + "---|" * (6 + 2 * len(refs)))
  summary = {"cpu_family": cpu_family(), "matmul_peak_gflops": round(peak, 1),
             "other_process_cores": round(other_cores, 2)}
  for res in resolutions:
    for name in nets:
      row = rows[res, name]
      ms = statistics.median(row["ms"])
      cells = []
      key = f"{key_of(name)}/{res}"
      summary[f"{key}/params"] = row["params"]
      summary[f"{key}/fwd_flops_per_example"] = row["flops"]
      summary[f"{key}/ms_per_step"] = round(ms, 1)
      for ref in refs:
        ratios = [a / b for a, b in zip(row["ms"], rows[res, ref]["ms"])]
        flop_ratio = row["flops"] / rows[res, ref]["flops"]
        time_ratio = statistics.median(ratios)
        cells.append(f"{flop_ratio:.2f} | {time_ratio:.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
        tag = key_of(ref)
        summary[f"{key}/flops_over_{tag}"] = round(flop_ratio, 3)
        summary[f"{key}/time_over_{tag}"] = round(time_ratio, 3)
      print(f"| {name} | {res} ({IMAGE_TOKENS[res]}) | {batch[res]} | {row['params'] / 1e6:.1f} | "
            f"{row['flops'] / 1e9:.2f} | {ms:.0f} [{min(row['ms']):.0f}-{max(row['ms']):.0f}] | "
            f"{' | '.join(cells)} |")
  summary["runtime_s"] = round(time.perf_counter() - t_start, 1)
  print(f"\nruntime {summary['runtime_s']:.0f} s")
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
