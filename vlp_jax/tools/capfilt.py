"""CapFilt (BLIP, Li et al. 2022, sec. 3.3): caption and filter a data set with a BLIP run.

  python -m vlp_jax.tools.capfilt --config=configs/blip_base.py:variant=tiny \\
      --workdir=workdirs/blip_tiny --data=jsonl:web_pairs --out=capfilt_out

The run's decoder (the captioner) writes one synthetic caption per image by nucleus
sampling (--top_p); its matching head (the filter) scores every (image, web caption) and
(image, synthetic caption) pair. A caption is kept when its match probability (the softmax
of the ITM head's two logits, sigmoid of family.match) is >= --threshold and its origin is
in --keep. The kept pairs become a new data set that training reads as it is: a `jsonl:`
folder (--format=jsonl: OUT/captions.jsonl, the images copied byte for byte to
OUT/images/) or webdataset shards (--format=wds: OUT/00000.tar, ...), one record per kept
pair. OUT/capfilt_scores.jsonl holds every caption's probability (to choose a threshold)
and OUT/capfilt_summary.json the counts, also printed as the last line.

--config is the run's config (its checkpoints record a fingerprint that must match, not the
whole config). Records that fail the input checks or decoding are counted by reason and
skipped. Records naming the same image (key) are one image: one synthetic caption, all of
their web captions. Decoding is deterministic given --seed and --batch_size.
"""
import json
import math
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

KEEP = ("web", "synthetic")
FORMATS = ("jsonl", "wds")
SUMMARY = "capfilt_summary.json"
SCORES = "capfilt_scores.jsonl"
FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags, defined only when this module runs as the program: main.py
  defines --config, --workdir and others on the same global absl registry."""
  config_flags.DEFINE_config_file("config", None, "The BLIP run's config file, optionally "
                                  "path:arg (as given to main.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "The BLIP run (its checkpoints and tokenizer).")
  flags.DEFINE_string("data", None, "Input data spec: jsonl:PATH[:split], builtin:shapes:SPLIT, "
                      "wds:GLOB, tfds:NAME:SPLIT.")
  flags.DEFINE_string("out", None, "Output folder (created; must not hold anything yet).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_list("keep", list(KEEP), "Caption origins that may be kept: web, synthetic.")
  flags.DEFINE_float("threshold", 0.5, "Keep a caption whose ITM match probability is >= this.")
  flags.DEFINE_float("top_p", 0.9, "Nucleus sampling of the synthetic captions (BLIP: 0.9).")
  flags.DEFINE_integer("max_len", 0, "Generated tokens, EOS included (0: decode.max_length, "
                       "else model.context_length).")
  flags.DEFINE_integer("batch_size", 0, "Images per jitted batch (0: eval.batch_size).")
  flags.DEFINE_string("format", "jsonl", "Output format: jsonl or wds.")
  flags.DEFINE_integer("per_shard", 1000, "--format=wds: pairs per shard.")
  flags.DEFINE_integer("seed", 0, "Seed of the nucleus sampling.")
  flags.DEFINE_bool("allow_config_change", False, "Read a checkpoint although the config "
                    "fields that shape the model differ from its own.")
  flags.DEFINE_bool("debug", False, "Show the full traceback of input errors.")


def check_options(workdir, data, out, keep, threshold, top_p, max_len, batch_size, fmt,
                  per_shard):
  """ValueError naming the first bad flag; cheap, before anything is loaded."""
  def fail(message):
    raise ValueError(message)
  if not workdir:
    fail("--workdir is required: the BLIP run whose captioner and filter to use")
  if not os.path.isdir(workdir) and "://" not in workdir:
    fail(f"--workdir={workdir} does not exist; pass the workdir of a trained BLIP run")
  if not data:
    fail("--data is required: the data spec to caption and filter")
  if not out:
    fail("--out is required: the folder of the filtered data set")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    fail(f"--out={out} already exists and is not an empty folder")
  unknown = [k for k in keep if k not in KEEP]
  if not keep or unknown:
    fail(f"--keep={','.join(keep)}: expected a non-empty list of {', '.join(KEEP)}")
  if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
    fail(f"--threshold={threshold} must be in [0, 1]")
  if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
    fail(f"--top_p={top_p} must be in (0, 1]")
  if max_len < 0:
    fail(f"--max_len={max_len} must be >= 0")
  if batch_size < 0:
    fail(f"--batch_size={batch_size} must be >= 1 (0: eval.batch_size)")
  if fmt not in FORMATS:
    fail(f"--format={fmt} must be one of {', '.join(FORMATS)}")
  if per_shard < 1:
    fail(f"--per_shard={per_shard} must be >= 1")


def logit(p):
  """log(p / (1 - p)), +-inf at 1 and 0: keeping by log-odds is exact where float32
  sigmoid rounds to 0 or 1 (--threshold=1 keeps nothing, 0 everything)."""
  if p <= 0:
    return -math.inf
  if p >= 1:
    return math.inf
  return math.log(p) - math.log1p(-p)


def _sigmoid(x):
  x = float(x)
  if not math.isfinite(x):
    return float("nan") if math.isnan(x) else float(x > 0)
  return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def image_extension(name, image_bytes):
  """The file extension of an image: from its bytes, else from its name (.jpg if none)."""
  for magic, ext in _MAGIC:
    if image_bytes.startswith(magic):
      return ext
  if image_bytes[:4] == b"RIFF" and image_bytes[8:12] == b"WEBP":
    return ".webp"
  ext = os.path.splitext(name)[1].lower()
  return ext if ext in (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp") else ".jpg"


def _filter_class():
  """The jitted captioner and filter, a runner.Encoder (imported late: jax is slow to load)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vlp_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import sharding  # pylint: disable=g-import-not-at-top

  class Filter(runner.Encoder):
    """Fixed-size batches of an EvalSet's positions (the last padded), sharded over the
    batch axes, uint8 images normalised on device, outputs replicated: every host gets
    every caption and score. Each host feeds the images it decoded (the layout's rows)."""

    def __init__(self, family, mesh, batch_size, top_p, max_len, seed):
      super().__init__(family, mesh, batch_size)
      self.rng = jax.random.PRNGKey(seed)
      norm = preprocess.normalize_on_device
      s, rep = self._sharding, sharding.replicated(mesh)

      def caption(params, images, rng):
        return family.caption(params, norm(images), rng, method="sample", top_p=top_p,
                              max_len=max_len)

      def scores(params, images, web, synthetic):
        """[b, K + 1] log-odds of a match: K web caption slots, then the synthetic one."""
        context = family.image_context(params, norm(images))
        tokens = jnp.concatenate([web, synthetic[:, None]], axis=1)
        b, k, length = tokens.shape
        score = family.match(params, jnp.repeat(context, k, axis=0),
                             tokens.reshape(b * k, length))
        return score.reshape(b, k).astype(jnp.float32)

      self._captions = jax.jit(caption, in_shardings=(None, s, None), out_shardings=rep)
      self._scores = jax.jit(scores, in_shardings=(None, s, s, s), out_shardings=rep)

    def _positions(self, fn, params, ev, columns, rng=None):
      """fn(params, images, *columns[, key]) over every position of `ev` in batches; the
      columns [P, ...] are indexed by position and held whole by every host; `rng` gives
      batch j the key fold_in(rng, j). Outputs of the usable positions, in order."""
      bs, rows = self.layout.batch_size, self.layout.rows
      total = len(ev.valid)
      outs = []
      with sharding.rules_context(), jax.set_mesh(self.mesh):
        for j, start in enumerate(range(0, total, bs)):
          wanted = start + rows
          at = np.minimum(np.searchsorted(ev.positions, wanted), max(len(ev.positions) - 1, 0))
          hit = (ev.positions[at] == wanted) if len(ev.positions) else np.zeros(len(rows), bool)
          images = np.zeros((len(rows),) + ev.images.shape[1:], ev.images.dtype)
          images[hit] = ev.images[at[hit]]
          local = [images] + [c[np.minimum(wanted, total - 1)] for c in columns]
          args = [jax.make_array_from_process_local_data(self._sharding, a,
                                                         (bs,) + a.shape[1:]) for a in local]
          extra = () if rng is None else (jax.random.fold_in(rng, j),)
          outs.append(np.asarray(fn(params, *args, *extra)))
      return np.concatenate(outs)[:total][ev.valid]

    def captions(self, params, ev):
      """Sampled caption tokens [N, max_len] of the usable images."""
      return self._positions(self._captions, params, ev, [], self.rng)

    def scores(self, params, ev, web, synthetic):
      """[N, K + 1] match log-odds; web [P, K, L] and synthetic [P, L] by position."""
      return self._positions(self._scores, params, ev, [web, synthetic])

  return Filter


def _read(spec, config, tokenizer, layout):
  """(source, EvalSet) of every record of `spec` (eval.max_examples does not cap it)."""
  from vlp_jax.data import eval_set, sources  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.eval.max_examples = 0
  try:
    source = sources.from_config(spec, c.data)
    return source, eval_set.from_source(source, c, tokenizer, layout)
  except ValueError as e:
    raise ValueError(f"--data={spec}: {e}") from None


def _image_bytes(source, positions):
  """The encoded image of each of `positions` (ascending), read again from the source."""
  from vlp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  wanted = iter(positions)
  target = next(wanted, None)
  if target is None:
    return
  for position, record in enumerate(pipeline.iterate(source.records())):
    if position != target:
      continue
    data = record["image"]
    if not data:
      with open(record["path"].decode("utf-8", "surrogateescape"), "rb") as f:
        data = f.read()
    yield data
    target = next(wanted, None)
    if target is None:
      return
  raise ValueError(f"{source.name}: fewer records on the second reading; did it change?")


def run(config, workdir, data, out, step=None, keep=KEEP, threshold=0.5, top_p=0.9,
        max_len=0, batch_size=0, fmt="jsonl", per_shard=1000, seed=0,
        allow_config_change=False):
  """Captions and filters `data` with the BLIP run in workdir; writes the kept pairs to
  `out` and returns the summary (also written to out/capfilt_summary.json)."""
  keep = tuple(keep)
  check_options(workdir, data, out, keep, threshold, top_p, max_len, batch_size, fmt,
                per_shard)
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  family_cls = families.FAMILIES.get(config.model.name)
  needs = {"caption", "retrieval_itm"}  # a captioner and a matching head
  if family_cls is None or not needs <= family_cls.EVALUATIONS:
    able = sorted(n for n, f in families.FAMILIES.items() if needs <= f.EVALUATIONS)
    raise ValueError(f"--config: model.name={config.model.name!r} is not a BLIP run; CapFilt "
                     f"needs a captioner and a matching head (families: {', '.join(able)})")
  if max_len > config.model.context_length:
    raise ValueError(f"--max_len={max_len} exceeds model.context_length="
                     f"{config.model.context_length}")

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import jsonl_writer, wds_writer  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import loop  # pylint: disable=g-import-not-at-top

  s, state = loop.restore_for_reading(config, workdir, step, allow_config_change)
  s.checkpointer.close()
  step = int(state.step)
  params, tok = state.params, s.tokenizer
  max_len = max_len or config.decode.max_length or config.model.context_length
  filt = _filter_class()(s.family, s.mesh, batch_size or config.eval.batch_size, top_p,
                         max_len, seed)
  source, ev = _read(data, config, tok, filt.layout)

  # Usable image i sits at position valid[i]; its web captions are texts owner == i.
  valid = np.flatnonzero(ev.valid)
  n, total, length = len(valid), len(ev.valid), tok.context_length
  owner = np.arange(len(ev.captions)) if ev.text_image is None else ev.text_image
  web_of = [[] for _ in range(n)]
  for t, i in enumerate(owner):
    web_of[i].append(t)
  slots = max(1, max(len(w) for w in web_of))
  web = np.zeros((total, slots, length), np.int32)
  for i, texts in enumerate(web_of):
    web[valid[i], :len(texts)] = ev.tokens[texts]

  synthetic_texts = [""] * n
  synthetic = np.zeros((total, length), np.int32)
  if "synthetic" in keep:
    synthetic_texts = tok.decode(filt.captions(params, ev))
    synthetic[valid] = tok.encode(synthetic_texts)
  scores = filt.scores(params, ev, web, synthetic)

  # Records of one image (key) are one image: the first one's synthetic caption, every web one.
  groups = {}
  for i, key in enumerate(ev.keys):
    groups.setdefault(key, []).append(i)
  cutoff = logit(threshold)
  counts = dict.fromkeys(("web_captions", "web_kept", "web_dropped", "synthetic_captions",
                          "synthetic_kept", "synthetic_dropped", "synthetic_empty",
                          "images_kept", "images_dropped", "pairs_written"), 0)
  images = []  # (key, first usable index, [(caption, origin)], score row)
  for key, members in groups.items():
    rows, kept = [], []
    for i in members:
      for k, t in enumerate(web_of[i]):
        ok = "web" in keep and scores[i, k] >= cutoff
        counts["web_captions"] += 1
        counts["web_kept" if ok else "web_dropped"] += 1
        rows.append({"origin": "web", "caption": ev.captions[t], "p": _sigmoid(scores[i, k]),
                     "kept": bool(ok)})
    if "synthetic" in keep:
      i = members[0]
      text = synthetic_texts[i]
      blank = not text.strip()
      ok = not blank and scores[i, slots] >= cutoff
      counts["synthetic_captions"] += 1
      counts["synthetic_empty"] += int(blank)
      counts["synthetic_kept" if ok else "synthetic_dropped"] += 1
      rows.append({"origin": "synthetic", "caption": text, "p": _sigmoid(scores[i, slots]),
                   "kept": bool(ok)})
    kept = [(r["caption"], r["origin"]) for r in rows if r["kept"]]
    counts["images_kept" if kept else "images_dropped"] += 1
    counts["pairs_written"] += len(kept)
    images.append((key, members[0], kept, rows))

  summary = {
      "workdir": workdir, "step": step, "data": data, "out": out, "format": fmt,
      "keep": list(keep), "threshold": threshold, "top_p": top_p, "max_len": max_len,
      "seed": seed, "batch_size": filt.batch_size,
      "records_read": total, "records_skipped": int(total - n),
      "skipped": {k: v for k, v in ev.skipped.items() if v},
      "images_read": len(groups), **counts}
  if jax.process_index() != 0:
    return summary

  os.makedirs(out, exist_ok=True)
  written = [im for im in images if im[2]]
  blobs = _image_bytes(source, [int(valid[first]) for _, first, _, _ in written])
  names = {}

  def pairs():
    """(output image name, bytes, caption) of every kept pair, image by image."""
    for number, ((key, _, kept, _), blob) in enumerate(zip(written, blobs)):
      names[key] = f"{number:08d}{image_extension(key, blob)}"
      for caption, _ in kept:
        yield names[key], blob, caption

  if fmt == "jsonl":
    jsonl_writer.write_jsonl_folder(out, pairs())
  else:
    samples = (wds_writer.sample(f"{j:09d}", name, blob, caption)
               for j, (name, blob, caption) in enumerate(pairs()))
    wds_writer.write_shards(out, samples, per_shard)
  with open(os.path.join(out, SCORES), "w", encoding="utf-8") as f:
    for key, _, _, rows in images:
      image = names.get(key)
      if image and fmt == "jsonl":
        image = os.path.join("images", image)
      f.write(json.dumps({"key": key, "image": image, "captions": rows}) + "\n")
  with open(os.path.join(out, SUMMARY), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  logging.info("CapFilt: %d of %d images kept, %d pairs written to %s", counts["images_kept"],
               len(groups), counts["pairs_written"], out)
  return summary


def parse_flags(argv):
  """absl's parser; a bad flag ends with one line (status 2)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).splitlines()[0]} (--helpfull lists the flags)", file=sys.stderr)
    sys.exit(2)


def _config():
  """FLAGS.config, or exit 2 with one line (config_flags defers a load error to first use)."""
  path = FLAGS["config"].config_filename
  if not path:
    print("error: --config is required: the BLIP run's config file", file=sys.stderr)
    sys.exit(2)
  try:
    config = FLAGS.config
    config.keys()
    return config
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's file
    if FLAGS.debug:
      raise
    lines = str(e).strip().splitlines()
    print(f"error: --config={path}: {type(e).__name__}: {lines[-1] if lines else ''}",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  f = FLAGS
  try:
    check_options(f.workdir, f.data, f.out, f.keep, f.threshold, f.top_p, f.max_len,
                  f.batch_size, f.format, f.per_shard)
    config = _config()
    summary = run(config, f.workdir, f.data, f.out, step=f.step, keep=f.keep,
                  threshold=f.threshold, top_p=f.top_p, max_len=f.max_len,
                  batch_size=f.batch_size, fmt=f.format, per_shard=f.per_shard, seed=f.seed,
                  allow_config_change=f.allow_config_change)
  except ValueError as e:
    if f.debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary, sort_keys=True), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
