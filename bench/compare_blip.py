"""vlp_jax's BLIP train step against BLIP built from Hugging Face transformers: speed, memory.

  pip install -e .[bench]     # torch 2.13.0 (CPU), transformers, safetensors; no weights
  python bench/compare_blip.py [--spec=tiny_spec|blip_tiny] [--batch=64] [--repeats=5]
      [--steps=3] [--skip_parity] [--vlp=unrolled,scan_remat,scan_remat_full]
      [--torch_threads=0,1] [--one_core]
  python bench/compare_blip.py --profile [--spec=...] [--vlp=unrolled] [--repeats=9]

The PyTorch side a user would otherwise pick is Salesforce's BLIP (LAVIS blip_pretrain.py,
BLIP's models/blip_pretrain.py). LAVIS pins transformers<4.27 and does not install beside
this stack, so its pretraining step is composed from transformers' own BLIP modules
(bench/torch_blip.py, `TorchBlipPretrain`), line for line as BLIP's `forward`:
  BlipVisionModel + vision_proj; a BlipTextModel encoder with cross-attention, run unimodal
  ([CLS] first, no image) for ITC and image-grounded ([ENC] first) for ITM; a
  BlipTextLMHeadModel decoder ([DEC] first, causal) tied to the encoder in everything but
  self-attention (BLIP's tie_encoder_decoder_weights: embeddings, cross-attention, MLP; the
  LM head's output tied to the word embeddings); itm_head, text_proj; momentum copies of the
  vision model, vision_proj, text encoder and text_proj (EMA 0.995, updated first, as BLIP)
  and [E, Q] feature queues of our queue size; ITC with momentum distillation (alpha 0.4);
  ITM on one hard negative image per text and one text per image drawn with torch.multinomial
  from the batch similarities (vectorised over rows; BLIP loops with .item()); LM loss without
  label smoothing (ours has none); temperature clamped in [0.001, 0.5]; AdamW with our
  settings (lr, betas, eps, weight decay on matrices only, global-norm clipping at
  optim.clip_norm) and the faster of torch's for-loop / foreach implementations.
vlp_jax runs configs/blip_base.py:variant=tiny at `--spec`'s sizes through families.get_family, state.create,
optimizer.make and make_train_step, as the trainer does, in one or more layer settings
(`--vlp`): unrolled = model.scan=False, model.remat=False; scan_remat = scan + remat keeping
the weight matmuls (tiny_spec.VLP_OPTIONS, as compare_open_clip.py runs CLIP);
scan_remat_full = the config's own scan=True, remat=True with remat_policy=full.
Same sizes both sides, by `--spec`:
  tiny_spec (default): bench/tiny_spec.py's SPEC, the sizes of the CLIP/CoCa comparison
    (compare_open_clip.py): 64 px images, patch 8, width 256 (vision and text), 4 heads,
    6 vision and 6 text layers, vocabulary 32,000, context 32, joint 256, MLP 1,024;
    21,139,203 trained parameters. Captions 5-30 pieces + EOS padded to 32.
  blip_tiny: configs/blip_base.py:variant=tiny as is: 32 px images, patch 8, width 128,
    4 heads, 2 vision and 2 text layers, vocabulary 128, context 24, joint 128, MLP 512;
    1,155,459 parameters. Captions 5-22 pieces + EOS padded to 24.
Both: exact GELU, float32, queue 1,024, batch 64, pad tokens masked on both sides.
`--profile` times the parts of vlp_jax's step instead (as bench/step_profile.py for
CLIP/CoCa), each jitted alone, all interleaved round by round: image tower fwd+bwd, unimodal
text fwd+bwd, momentum forwards, ITM on 3B pairs fwd+bwd (with the before/after variants of
the changes below), decoder + fused vocabulary loss fwd+bwd, ITC + hard negatives,
AdamW + EMA + enqueue, and the whole step.

Steps (the structure of bench/compare_open_clip.py):
  1. Parity: the torch model (randomly initialised, LayerNorms and biases perturbed so that
     no slot is trivially 0 or 1) is saved as a BlipForImageTextRetrieval and a
     BlipForConditionalGeneration checkpoint (save_pretrained, safetensors), imported with
     vlp_jax.models.import_hf_blip (unrolled and scanned), and both sides read the same ids
     (ours: [CLS]=3 / [ENC]=5 / [DEC]=6 first, EOS=2, pad 0) through their pieces: image and
     text embeddings, ITM logits, LM logits must agree to rtol 1e-4 or the benchmark stops.
  2. One worker process per implementation/setting (max RSS is its own), warmed up, then
     timed in turn (order reversed every round): `--repeats` rounds of `--steps` full train
     steps. Reported: samples/s (median, min-max over rounds), max RSS of the worker (whole
     process, imports included), RSS after importing the libraries, first step (compile),
     and the cores other processes used while each side ran (the machine is shared).
  3. XLA's FLOP count of the unrolled step (cost analysis) gives GFLOP/s for each; the
     float32 matmul peak (N=2048, best of jax and torch) frames it. Since vlp_jax's last
     text layer computes only the first position where only it is read (unimodal and ITM
     encoders), torch does more work than that count: its GFLOP/s are understated.
The last line is one JSON object with the figures, `speed_ratio` and `memory_ratio` per
vlp_jax setting (vlp_jax / torch) and `best` (the vlp_jax setting with the most samples/s).

Measured 2026-12-02 08:37-08:56 UTC (Intel Xeon, cpu family 6 model 167, AVX-512 + AMX;
2 cores, the other jobs finished during the runs: 'others' 0.00-0.02 cores; matmul peak
434-442 GFLOP/s), batch 64, after the changes of this date (the text stack's last layer
computes only the first position where only it is read; ITM projects each image's
cross-attention keys/values once). Parity <= 9.4e-7 rel at both specs.
tiny_spec (default), 3 rounds of 2 steps, `--vlp=unrolled,scan_remat --torch_threads=0,1`:
  impl                     samples/s     min-max ms/step GFLOP/s  RSS MiB  imports  others
  vlp_jax:unrolled              12.9  12.0- 16.6    4945   109.4     5025      635    0.01
  vlp_jax:scan_remat            14.4  13.7- 14.5    4453   121.5     3146      635    0.01
  torch (2 threads)             17.3  16.6- 18.5    3710   145.8     3789      374    0.01
  torch:1thread                 10.0   9.8- 10.6    6426    84.2     3765      375    0.00
  (8.452 GFLOP/sample by XLA's count of vlp_jax's unrolled step; 9.818 before the changes)
  vlp_jax / torch: speed 0.75x unrolled, 0.83x scan_remat; max RSS 1.33x / 0.83x.
blip_tiny, 5 rounds of 3 steps, `--vlp=unrolled,scan_remat_full --torch_threads=0,1`:
  vlp_jax:unrolled             324.4 322.2-337.2     197   105.2     1963      635    0.00
  vlp_jax:scan_remat_full      220.4 212.2-225.7     290    71.5     1663      635    0.01
  torch (2 threads)            329.8 324.2-333.3     194   107.0      694      374    0.02
  torch:1thread                198.6 196.9-202.2     322    64.4      695      375    0.00
  (0.324 GFLOP/sample, 0.463 before) vlp_jax / torch: speed 0.98x unrolled, 0.67x
  scan_remat_full; max RSS 2.83x / 2.40x.
Targets (>= 1.3x speed, <= 0.7x memory) not met at either spec.
The changes' effect, vlp_jax before (commit 63fd380) / after, unrolled, one worker each,
interleaved (/tmp A/B driver over this file's jax worker; same loss after warm-up):
tiny_spec 7.65 (6.78-7.70) -> 8.52 (8.01-8.79) samples/s, +11%, 5 rounds, one other job
busy; blip_tiny 248.0 (236.8-253.8) -> 316.9 (279.6-325.6), +28%, 7 rounds, quiet; max RSS
5111 -> 5089 and 1801 -> 1963 MiB. Scanned stacks run every layer in full (no change).
`--profile --vlp=unrolled`, tiny_spec, 5 rounds, quiet (1.69 cores busy, this one included):
  image tower fwd+bwd 922 ms (21% of the step), unimodal text fwd+bwd 370 (9%), momentum
  forwards 271 (6%), ITM on 3B pairs fwd+bwd 1,499 (35%; 1,623 with the image tokens
  gathered to 3B rows, 1,874 with every position through the last layer as before),
  decoder + fused vocabulary loss fwd+bwd 945 (22%), ITC + hard negatives 3, AdamW + EMA +
  enqueue 61 (1%); whole step 4,342 ms.
  blip_tiny (9 rounds, loaded: 2.0 cores busy): image 62 ms, unimodal text 35, momentum 19,
  ITM 183 (296 before), decoder + loss 111 (100 with 128-row chunks that skip padding, so
  the loss keeps 128-row chunks by default), AdamW + EMA 11; step 393 ms.
Before the changes, tiny_spec under ~1.4 cores of other jobs (3 rounds of 2 steps, torch at
1 thread only): vlp_jax 4.2 unrolled / 3.9 scan_remat vs torch 4.5 samples/s (0.94x /
0.88x), max RSS 5135 / 3328 vs 3857 MiB (the load cut every figure ~3x: not comparable with
the quiet runs above; the interleaved A/B is the measure of the changes).
Before the changes, blip_tiny on the same machine under ~1.35 cores of other jobs (7 rounds):
vlp_jax 70.8 unrolled / 62.5 scan_remat / 78.4 scan_remat_full vs torch 116.9 (1 thread;
12.9 at 2 threads, wrecked by the load) samples/s, max RSS 1.7-1.9 GiB vs 0.73 GiB.
What stands in the way (measured here):
  - speed: the work is the same shape on both sides (vlp_jax now does less), so the gap is
    kernel throughput: at tiny_spec torch's 2-thread step runs 146 GFLOP/s of (vlp_jax's)
    FLOPs, XLA's 109-122. No part dominates enough to fix alone: image tower 21%, ITM 35%,
    decoder + vocabulary loss 22%. The fused vocabulary loss helps BLIP less than CoCa
    (1.46x there): BLIP's step adds a momentum model, an ITM pass over 3B pairs and a
    second text pass, so the 32,000-way head (64 x 31 positions, ~1.5 GFLOP/sample fwd+bwd
    before skipping padding) is a smaller share of the step than CoCa's 28%.
    Scan + remat (dots) was the faster setting at tiny_spec (14.4 vs 12.9, within the noise
    of 3 rounds) but gets no first-position saving: nn.scan runs every layer alike.
  - memory: 635 MiB after imports, ~460 of it TensorFlow: vlp_jax.families imports
    families.catlip (vlp_jax.data.tf_setup, synsets) and families.albef / families.fusion
    import vlp_jax.data.tokenizer, which imports TF at module level (import jax, flax, optax
    alone: 171 MiB; + tensorflow: 613; + tensorflow_datasets: 621). A lazy vlp_jax.data
    __init__ would save only the ~8 MiB of tfds: the TF imports are in catlip.py and
    tokenizer.py. Then XLA's compile heap: unrolled steps keep ~1.3 GiB (blip_tiny) and
    ~4.4 GiB (tiny_spec) above the imports at peak; scan_remat cuts the latter to ~2.5
    GiB (3.1 GiB max, 0.83x torch's 3.8 GiB), short of 0.7x.
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

from torch_blip import torch_optimizer, torch_pretrain  # pylint: disable=wrong-import-position
import workers  # pylint: disable=wrong-import-position
from workers import Worker, busy_cpu_seconds, matmul_peak, max_rss_mib, reply, serve, timed  # pylint: disable=wrong-import-position
from tiny_spec import SPEC, VLP_OPTIONS, parse_overrides  # pylint: disable=wrong-import-position

PAD, EOS, CLS, ENC, DEC = 0, 2, 3, 5, 6  # vlp_jax.data.tokenizer's ids
FIRST_PIECE = 7
SETTINGS = {
    "unrolled": {"model.scan": False, "model.remat": False},
    "scan_remat": dict(VLP_OPTIONS),
    "scan_remat_full": {"model.scan": True, "model.remat": True, "model.remat_policy": "full"},
}


# ----------------------------------------------------------------------------- shared

# The sizes compared (`--spec`): tiny_spec = bench/tiny_spec.py's SPEC (the CLIP/CoCa
# comparison's) applied to BLIP's towers; blip_tiny = configs/blip_base.py:variant=tiny as is.
SPECS = {
    "tiny_spec": {
        "model.image_size": SPEC["image_size"], "model.patch_size": SPEC["patch_size"],
        "model.vision_width": SPEC["width"], "model.text_width": SPEC["width"],
        "model.vision_depth": SPEC["depth"], "model.text_depth": SPEC["depth"],
        "model.vision_heads": SPEC["heads"], "model.text_heads": SPEC["heads"],
        "model.context_length": SPEC["context"], "model.vocab_size": SPEC["vocab"],
        "model.embed_dim": SPEC["embed_dim"]},
    "blip_tiny": {},
}


def blip_config(batch_size=64, overrides=None, spec="tiny_spec"):
  """configs/blip_base.py:variant=tiny with `spec`'s sizes (SPECS) at `batch_size`, on this
  host's devices; then `overrides`."""
  import importlib.util
  from vlp_jax import config_lib
  loader = importlib.util.spec_from_file_location(
      "blip_base", os.path.join(ROOT, "configs", "blip_base.py"))
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  c = module.get_config("variant=tiny")
  c.train.batch_size = batch_size
  c.mesh.data, c.mesh.fsdp, c.mesh.model = -1, 1, 1
  c.update_from_flattened_dict({**SPECS[spec], **(overrides or {})})
  config_lib.validate(c)
  return c


def torch_spec(batch_size, spec):
  """The config fields the torch side reads, as JSON: the torch worker must not import
  vlp_jax's families (config_lib.validate loads jax and more), or its RSS would count them."""
  c = blip_config(batch_size, spec=spec)
  return json.dumps({part: c[part].to_dict() for part in ("model", "optim", "loss")})


def namespace(spec):
  import types
  return {k: types.SimpleNamespace(**v) for k, v in json.loads(spec).items()}


def make_batch(batch_size, m, seed=0):
  """Images NHWC float32 and captions in our tokenizer's layout [pieces, EOS, 0...]."""
  import numpy as np
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch_size, m.image_size, m.image_size, 3), dtype=np.float32)
  tokens = np.zeros((batch_size, m.context_length), np.int32)
  for i, n in enumerate(rng.integers(5, m.context_length - 1, batch_size)):
    tokens[i, :n] = rng.integers(FIRST_PIECE, m.vocab_size, n)
    tokens[i, n] = EOS
  return images, tokens


def prefixed(tokens, first):
  """fusion.with_prefix in numpy: [first, pieces, EOS, 0...] of the same length."""
  import numpy as np
  out = np.concatenate([np.full((tokens.shape[0], 1), first, tokens.dtype), tokens[:, :-1]], 1)
  full = tokens[:, -1] != PAD
  out[full, -1] = EOS
  return out


# ----------------------------------------------------------------------------- workers


def vlp_train_step(batch_size, overrides, spec):
  """The trainer's jitted step for BLIP at `spec`, a fresh state and the benchmark batch."""
  config = blip_config(batch_size, overrides, spec)
  images, tokens = make_batch(batch_size, config.model)
  step, state, _, batch = workers.trainer_step(config, EOS, {"image": images, "tokens": tokens})
  return step, state, batch


def jax_worker(batch_size, warmup, overrides, flops, spec):
  def make():
    import jax  # pylint: disable=g-import-not-at-top
    step, state, batch = vlp_train_step(batch_size, overrides, spec)
    return step, state, batch, dict(params=int(sum(x.size for x in jax.tree.leaves(state.params))))
  workers.jax_worker(make, batch_size, warmup, flops)


def torch_worker(batch_size, warmup, foreach, torch_config, threads):
  import numpy as np
  import torch
  if threads:
    torch.set_num_threads(threads)
  import transformers  # pylint: disable=unused-import
  from transformers.models.blip import modeling_blip, modeling_blip_text  # pylint: disable=unused-import
  rss_imports = max_rss_mib()
  a = torch.from_numpy(np.random.default_rng(0).standard_normal((2048, 2048), np.float32))
  torch.mm(a, a)
  peak = matmul_peak(lambda x=a: torch.mm(x, x))
  del a

  config = namespace(torch_config)
  m, o = config["model"], config["optim"]
  net, _, _ = torch_pretrain(m, config["loss"])
  net.train()
  opt = torch_optimizer(net, o, foreach)
  params = [p for p in net.parameters() if p.requires_grad]
  images, tokens = make_batch(batch_size, m)
  image = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  ids = {k: torch.from_numpy(prefixed(tokens, v)).long() for k, v in
         (("cls", CLS), ("enc", ENC), ("dec", DEC))}
  mask = (ids["cls"] != PAD).long()
  w = config["loss"]
  last = {}

  def run_step():
    opt.zero_grad(set_to_none=True)
    ita, itm, lm = net(image, ids["cls"], ids["enc"], ids["dec"], mask, w.distill_alpha)
    loss = w.itc_weight * ita + w.itm_weight * itm + w.lm_weight * lm
    loss.backward()
    if o.clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(params, o.clip_norm, foreach=foreach)
    opt.step()
    last["loss"] = float(loss)

  t0 = time.perf_counter()
  run_step()
  first = time.perf_counter() - t0
  for _ in range(warmup):
    run_step()
  serve(run_step, dict(peak_gflops=peak, rss_imports_mib=rss_imports, first_step_s=first,
                       threads=torch.get_num_threads(), loss=last["loss"],
                       params=sum(p.numel() for p in params)))


def profile_worker(batch_size, repeats, overrides, spec):
  """Where vlp_jax's step goes (as bench/step_profile.py for CLIP/CoCa): each part of
  BlipFamily.features / loss / the update jitted alone, medians of `repeats` calls."""
  import jax
  import jax.numpy as jnp
  import optax
  from vlp_jax.losses import cross_entropy
  from vlp_jax.losses import momentum as momentum_loss
  from vlp_jax.models import fusion

  from vlp_jax import families
  from vlp_jax.train import optimizer
  step, state, batch = vlp_train_step(batch_size, overrides, spec)
  config = blip_config(batch_size, overrides, spec)
  family = families.get_family(config, eos_id=EOS)
  tx, _ = optimizer.make(config)
  m = family.module
  # Copies: the train step donates the state's buffers.
  params, fstate, opt_state = jax.tree.map(jnp.copy, (state.params, state.family_state,
                                                      state.opt_state))
  mom = fstate["momentum"]
  images = batch["image"]
  cls = family.prefixed(batch["tokens"], "cls")
  enc = family.prefixed(batch["tokens"], "enc")
  dec = family.prefixed(batch["tokens"], "dec")
  b = images.shape[0]

  def weighted(out):
    return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))

  def ap(p, method, *args):
    return m.apply({"params": p}, *args, method=method)

  image_tokens = jax.jit(lambda p, x: ap(p, m.image_tokens, x))(params, images)

  def itm_all_positions(mod, t, c):  # before first_only: the last layer on every position
    x = mod.text_layers(mod.embed(t), fusion.padding_mask(t), c)
    return mod.itm_head(x[:, 0])
  neg = jnp.roll(jnp.arange(b), 1)
  parts = {
      "image tower fwd+bwd": (jax.jit(jax.grad(lambda p, x: weighted(
          ap(p, m.image_embedding, ap(p, m.image_tokens, x))))), (params, images)),
      "unimodal text fwd+bwd": (jax.jit(jax.grad(lambda p, t: weighted(
          ap(p, m.text_embedding, t)))), (params, cls)),
      "momentum forwards (image+text)": (jax.jit(lambda p, x, t: (
          ap(p, m.encode_image, x), ap(p, m.text_embedding, t))), (mom, images, cls)),
      "ITM on 3B pairs fwd+bwd (as trained)": (jax.jit(jax.grad(lambda p, t, c: weighted(ap(
          p, m.itm_logits, jnp.concatenate([t, t, t[neg]]), c,
          jnp.concatenate([jnp.arange(b), neg, jnp.arange(b)]))), argnums=(0, 2))),
                                                (params, enc, image_tokens)),
      "  same, image tokens gathered to 3B": (jax.jit(jax.grad(lambda p, t, c: weighted(ap(
          p, m.itm_logits, jnp.concatenate([t, t, t[neg]]),
          jnp.concatenate([c, c[neg], c]))), argnums=(0, 2))), (params, enc, image_tokens)),
      "  same, and all positions to the end": (jax.jit(jax.grad(lambda p, t, c: weighted(ap(
          p, itm_all_positions, jnp.concatenate([t, t, t[neg]]),
          jnp.concatenate([c, c[neg], c]))), argnums=(0, 2))), (params, enc, image_tokens)),
  }

  def lm(p, ids, c, chunk=None):
    hidden = ap(p, m.decoder_hidden, ids, c)
    kernel, bias = ap(p, m.lm_output)
    labels = ids[:, 1:]
    weights = (labels != PAD).astype(jnp.float32)
    if chunk:
      return cross_entropy.fused_cross_entropy(hidden[:, :-1], kernel, bias, labels, weights,
                                               chunk)[0]
    return fusion.vocabulary_loss(hidden[:, :-1], kernel, bias, labels, weights)[0]
  parts["decoder + fused vocab loss fwd+bwd"] = (jax.jit(jax.grad(lm, argnums=(0, 2))),
                                                 (params, dec, image_tokens))
  parts["  same, chunks of 128 rows"] = (jax.jit(jax.grad(
      lambda p, i, c: lm(p, i, c, 128), argnums=(0, 2))), (params, dec, image_tokens))
  feats = jax.jit(lambda p, s, x, t: {
      "img": ap(p, m.image_embedding, ap(p, m.image_tokens, x)),
      "txt": ap(p, m.text_embedding, t), "img_m": ap(s, m.encode_image, x),
      "txt_m": ap(s, m.text_embedding, t)})(params, mom, images, cls)

  def itc(img, txt):
    scale = ap(params, m.logit_scale)
    return momentum_loss.momentum_contrastive(
        img, txt, feats["img_m"], feats["txt_m"], fstate["image_queue"], fstate["text_queue"],
        fstate["queue_count"], scale, 0.4)[0]
  parts["ITC (queues) + hard negatives"] = (jax.jit(lambda i, t, u: (
      jax.grad(itc, argnums=(0, 1))(i, t), momentum_loss.matching_pairs(
          i, t, cls, 10.0, u))), (feats["img"], feats["txt"], jnp.zeros((b, 2))))
  grads = jax.tree.map(jnp.ones_like, params)

  def update(g, o, p, fs, f):
    updates, o = tx.update(g, o, p)
    p = optax.apply_updates(p, updates)
    return p, o, family.update_state(fs, p, f)
  parts["AdamW + EMA + enqueue"] = (jax.jit(update), (grads, opt_state, params, fstate,
                                                       feats))
  results = {}
  for name, (fn, args) in parts.items():
    jax.block_until_ready(fn(*args))
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics
  jax.block_until_ready(one_step())
  times = {name: [] for name in list(parts) + ["whole train step"]}
  for _ in range(repeats):  # interleaved: the load drifts
    for name, (fn, args) in parts.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    jax.block_until_ready(one_step())
    times["whole train step"].append(time.perf_counter() - t0)
  for name, t in times.items():
    results[name] = [statistics.median(t), min(t), max(t)]
  reply(results=results)


def parity_worker(tmp, spec):
  """The torch model's weights in vlp_jax: embeddings, ITM and LM logits must agree."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torch.nn.functional as F
  from vlp_jax.models import blip as blip_model
  from vlp_jax.models import import_hf_blip

  config = blip_config(16, spec=spec)
  m = config.model
  net, ret, cap = torch_pretrain(m, config.loss)
  net.eval()
  ret.save_pretrained(os.path.join(tmp, "ret"))
  cap.save_pretrained(os.path.join(tmp, "cap"))
  images, tokens = make_batch(16, m, seed=1)
  ids = {k: prefixed(tokens, v).astype(np.int64) for k, v in
         (("cls", CLS), ("enc", ENC), ("dec", DEC))}
  t = {k: torch.from_numpy(v) for k, v in ids.items()}
  mask = (t["cls"] != PAD).long()
  keep = ids["dec"] != PAD
  with torch.no_grad():
    pix = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    tok = net.visual_encoder(pixel_values=pix).last_hidden_state
    atts = torch.ones(tok.shape[:-1], dtype=torch.long)
    ref = {"image_embedding": F.normalize(net.vision_proj(tok[:, 0]), dim=-1),
           "text_embedding": F.normalize(net.text_proj(net.text_encoder(
               input_ids=t["cls"], attention_mask=mask).last_hidden_state[:, 0]), dim=-1),
           "itm_logits": net.itm_head(net.text_encoder(
               input_ids=t["enc"], attention_mask=mask, encoder_hidden_states=tok,
               encoder_attention_mask=atts).last_hidden_state[:, 0]),
           "lm_logits": net.text_decoder(
               input_ids=t["dec"], attention_mask=mask, encoder_hidden_states=tok,
               encoder_attention_mask=atts).logits}
  ref = {k: v.numpy() for k, v in ref.items()}
  ref["lm_logits"] = ref["lm_logits"][keep]

  errors = {}
  for scan in (False, True):
    mc = blip_config(16, {"model.scan": scan}, spec).model
    params = import_hf_blip.import_blip(os.path.join(tmp, "ret"), os.path.join(tmp, "cap"),
                                        config_model=mc, shared_from="retrieval")
    module = blip_model.from_config(mc)

    @jax.jit
    def ours(params, images, cls, enc, dec, module=module):
      v = {"params": params}
      tok = module.apply(v, images, method=module.image_tokens)
      return {"image_embedding": module.apply(v, tok, method=module.image_embedding),
              "text_embedding": module.apply(v, cls, method=module.text_embedding),
              "itm_logits": module.apply(v, enc, tok, method=module.itm_logits),
              "lm_logits": module.apply(v, dec, tok, method=module.lm_logits)}
    out = ours(params, jnp.asarray(images), *(jnp.asarray(ids[k], jnp.int32)
                                               for k in ("cls", "enc", "dec")))
    out = {k: np.asarray(v) for k, v in out.items()}
    out["lm_logits"] = out["lm_logits"][keep]
    for k, r in ref.items():
      rel = float(np.max(np.abs(out[k] - r)) / np.max(np.abs(r)))
      errors[f"{k}{'/scan' if scan else ''}"] = rel
  n = sum(p.numel() for p in net.parameters() if p.requires_grad)
  reply(errors=errors, params=int(n))


# ----------------------------------------------------------------------------- driver


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--spec", default="tiny_spec", choices=sorted(SPECS),
                      help="sizes: tiny_spec (bench/tiny_spec.py's, as compare_open_clip.py) "
                      "or blip_tiny (configs/blip_base.py:variant=tiny)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3, help="train steps per timed round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--vlp", default="unrolled,scan_remat,scan_remat_full",
                      help=f"vlp_jax settings to time, of {sorted(SETTINGS)}")
  parser.add_argument("--torch_optim", default="foreach", choices=("foreach", "for_loop"),
                      help="torch AdamW / clipping implementation")
  parser.add_argument("--skip_parity", action="store_true")
  parser.add_argument("--torch_threads", default="0,1",
                      help="torch intra-op threads per torch row, 0 = torch's default; "
                      "e.g. 0,1 times both (ratios are against the faster torch row)")
  parser.add_argument("--profile", action="store_true",
                      help="only time the parts of vlp_jax's step (first --vlp setting), "
                      "--repeats interleaved calls each")
  parser.add_argument("--worker", choices=("jax", "torch", "parity", "spec", "profile"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--one_core", action="store_true",
                      help="pin every timed worker to the same single CPU (affinity, so XLA "
                      "and torch size their pools to 1)")
  parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
  parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  parser.add_argument("--torch_config", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker and args.one_core:  # before jax or torch size their thread pools
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  if args.worker == "jax":
    return jax_worker(args.batch, args.warmup, parse_overrides(args.set), args.flops,
                      args.spec)
  if args.worker == "torch":
    return torch_worker(args.batch, args.warmup, args.torch_optim == "foreach",
                        args.torch_config, args.threads)
  if args.worker == "spec":
    return reply(spec=torch_spec(args.batch, args.spec))
  if args.worker == "parity":
    return parity_worker(args.out, args.spec)
  if args.worker == "profile":
    return profile_worker(args.batch, args.repeats, parse_overrides(args.set), args.spec)
  if args.profile:
    name = args.vlp.split(",")[0]
    sets = [f"--set={k}={v}" for k, v in SETTINGS[name].items()]
    w = Worker(__file__, "--worker=profile", f"--batch={args.batch}", f"--spec={args.spec}",
               f"--repeats={args.repeats}", *sets, *(["--one_core"] if args.one_core else []))
    busy0, t0 = busy_cpu_seconds(), time.perf_counter()
    results = w.read()["results"]
    w.proc.wait()
    total = results["whole train step"][0]
    print(f"vlp_jax:{name} {args.spec}, batch {args.batch}: {'part':36} {'ms':>7} "
          f"{'min-max':>13} {'of step':>7}")
    for part, (med, lo, hi) in results.items():
      print(f"  {part:36} {med * 1e3:7.1f} {lo * 1e3:6.1f}-{hi * 1e3:6.1f} {med / total:7.0%}")
    print(f"(machine busy {(busy_cpu_seconds() - busy0) / (time.perf_counter() - t0):.2f} "
          "cores on average, this worker included)")
    print(json.dumps({f"{name}/{args.spec}/b{args.batch}/{k}/ms": v[0] * 1e3
                      for k, v in results.items()}))
    return None

  summary = {}
  if not args.skip_parity:
    with tempfile.TemporaryDirectory() as tmp:
      parity = Worker(__file__, "--worker=parity", f"--out={tmp}", f"--spec={args.spec}")
      result = parity.read()
      parity.proc.stdin.close()
      parity.proc.wait()
    errors = result["errors"]
    print(f"parity (transformers BLIP weights in vlp_jax via import_hf_blip, "
          f"{result['params']:,} trained params): max abs error / max |ref|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), flush=True)
    if max(errors.values()) > 1e-4:
      sys.exit(f"parity check failed: {errors}")
    summary.update({f"parity/{k}": v for k, v in errors.items()})

  b = args.batch
  names = args.vlp.split(",")
  pin = ["--one_core"] if args.one_core else []
  workers, info = {}, {}
  for i, name in enumerate(names):  # one at a time: compiles do not overlap
    sets = [f"--set={k}={v}" for k, v in SETTINGS[name].items()]
    flops = ["--flops"] if name == "unrolled" else []
    workers[f"vlp_jax:{name}"] = Worker(
        __file__, "--worker=jax", f"--batch={b}", f"--spec={args.spec}",
                                        f"--warmup={args.warmup}", *sets, *flops, *pin)
    info[f"vlp_jax:{name}"] = workers[f"vlp_jax:{name}"].read()
  # The driver stays light (no jax): a child's max RSS starts at its parent's RSS at fork.
  spec_worker = Worker(__file__, "--worker=spec", f"--batch={b}", f"--spec={args.spec}")
  spec = spec_worker.read()["spec"]
  spec_worker.proc.stdin.close()
  spec_worker.proc.wait()
  torch_rows = []
  for threads in (int(x) for x in args.torch_threads.split(",")):
    name = "torch" if not threads else f"torch:{threads}thread"
    torch_rows.append(name)
    workers[name] = Worker(__file__, "--worker=torch", f"--batch={b}", f"--warmup={args.warmup}",
                           f"--torch_optim={args.torch_optim}", f"--torch_config={spec}",
                           f"--threads={threads}", *pin)
    info[name] = workers[name].read()
  rates = {name: [] for name in workers}
  other = {name: [] for name in workers}
  for r in range(args.repeats):
    order = list(workers) if r % 2 == 0 else list(workers)[::-1]
    for name in order:
      seconds, busy = timed(workers[name], args.steps)
      rates[name].append(args.steps * b / seconds)
      other[name].append(busy)
    print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()),
          flush=True)
  end = {name: w.close() for name, w in workers.items()}

  xla = next((v["xla_flops_per_sample"] for v in info.values()
              if v.get("xla_flops_per_sample")), None)
  peak = max(v["peak_gflops"] for v in info.values())
  header = (f"{'impl':24} {'samples/s':>9} {'min-max':>11} {'ms/step':>7} {'GFLOP/s':>7} "
            f"{'RSS MiB':>8} {'imports':>8} {'RSS end':>8} {'1st step':>8} {'others':>6}")
  lines = [header]
  for name in workers:
    med = statistics.median(rates[name])
    gflops = med * xla / 1e9 if xla else float("nan")
    lines.append(f"{name:24} {med:9.1f} {min(rates[name]):5.1f}-{max(rates[name]):5.1f} "
                 f"{1000 * b / med:7.0f} {gflops:7.1f} {end[name]['max_rss_mib']:8.0f} "
                 f"{info[name]['rss_imports_mib']:8.0f} {end[name]['rss_end_mib']:8.0f} "
                 f"{info[name]['first_step_s']:7.1f}s {statistics.median(other[name]):6.2f}")
    summary[f"{name}/samples_per_s"] = med
    summary[f"{name}/min_max"] = [min(rates[name]), max(rates[name])]
    summary[f"{name}/max_rss_mib"] = end[name]["max_rss_mib"]
    summary[f"{name}/rss_imports_mib"] = info[name]["rss_imports_mib"]
    summary[f"{name}/loss_after_warmup"] = info[name]["loss"]
  ref = max(torch_rows, key=lambda n: summary[f"{n}/samples_per_s"])
  theirs = summary[f"{ref}/samples_per_s"], summary[f"{ref}/max_rss_mib"]
  for name in names:
    key = f"vlp_jax:{name}"
    summary[f"{name}/speed_ratio"] = summary[f"{key}/samples_per_s"] / theirs[0]
    summary[f"{name}/memory_ratio"] = summary[f"{key}/max_rss_mib"] / theirs[1]
  best = max(names, key=lambda n: summary[f"vlp_jax:{n}/samples_per_s"])
  summary.update(spec=args.spec, best=best, batch=b, peak_gflops=peak, xla_gflops_per_sample=xla and xla / 1e9,
                 torch_reference=ref, torch_params=info[ref]["params"],
                 torch_threads=info[ref]["threads"])
  print("\n" + "\n".join(lines))
  print(f"spec {args.spec}, batch {b}; peak float32 matmul {peak:.0f} GFLOP/s; GFLOP/s = samples/s x XLA's count "
        f"of the unrolled vlp_jax step ({(xla or float('nan')) / 1e9:.3f} GFLOP/sample) for "
        "both; 'others' = cores other processes used while timed")
  for name in names:
    print(f"vlp_jax:{name} / {ref}: speed {summary[f'{name}/speed_ratio']:.2f}x, max RSS "
          f"{summary[f'{name}/memory_ratio']:.2f}x ({', '.join(f'{k}={v}' for k, v in SETTINGS[name].items())})")
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
