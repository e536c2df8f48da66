"""Do ALBEF and BLIP ground text in the image? Masked attributes, ITM and re-ranked retrieval
on the built-in shapes scenes, against a text-only ALBEF.

  python bench/grounding.py [--steps=600] [--workdir_root=workdirs/grounding] [--reuse]

Runs (configs/albef_base.py:variant=tiny and configs/blip_base.py:variant=tiny, trained on
builtin:shapes:train, evaluated on the 1,000 held-out scenes of builtin:shapes:test):
  albef      `python main.py --config=configs/albef_base.py:variant=tiny` in a subprocess.
  blip       the same with configs/blip_base.py:variant=tiny.
  text-only  ALBEF's tiny config and steps, trained here (vlp_jax.train.loop.train) as the
             family `albef_text_only`, registered by this script: AlbefFamily whose
             `features`, `encode_image` and `image_context` replace every image by zeros (a
             constant after normalisation), in training and evaluation. Its fusion layers
             never see an image, so its masked-LM head can only learn the caption prior.
`--reuse` keeps a workdir that already holds a checkpoint at --steps (or resumes one that
holds an earlier one); without it the three workdirs under --workdir_root are trained anew.

Measures, from each run's last checkpoint:
  1. Masked attribute (ALBEF, text-only): for each held-out caption and attribute type
     (colour, shape, size), one of its words of that type (drawn with a fixed seed when the
     scene has several objects) has every SentencePiece piece replaced by [MASK]; the
     caption goes through the text and fusion layers with the image (zeros for the
     text-only model) and the MLM head; correct when the argmax at every masked piece is
     the original piece. Chance is 1/#words of the type; "prior" is the share of the most
     frequent word of the type among the training captions' attribute words (what a model
     that ignores the image can reach at best on independent attributes).
  2. ITM accuracy: each held-out image with its own caption (correct: match score > 0) and
     with another scene's caption, never an identical one (correct: score <= 0), by
     family.match(params, family.image_context(params, images), tokens).
  3. Retrieval R@1 both ways, by ITC similarity and with ITC's top eval.itm_top_k (16)
     re-ranked by the ITM head: vlp_jax.evaluate.runner.evaluate, the metrics
     `retrieval/shapes/*` and `retrieval_itm/shapes/*` of `main.py --mode=eval`. Identical
     captions count as matches (the runner's rule); chance is its `*_chance`.
Last line: one JSON object with every figure and the wall times.

Reference output (2026-12-02, this repo's 2 CPU cores shared with other jobs, load
average 5-7; default settings, 600 steps per run). ALBEF was trained first by the command
the bench runs (`python main.py --config=configs/albef_base.py:variant=tiny
--workdir=workdirs/grounding/albef`, with its end-of-training evaluation: 1,172 s), then
`python bench/grounding.py --reuse` trained the text-only ALBEF (873 s) and BLIP
(1,099 s) and evaluated the three (92 s): 2,074 s. Wall time of the
whole: 3,246 s (54 min). The runs trained at 0.5-1 steps/s here; ALBEF tiny trains at ~1.5
steps/s on the idle machine, so there the three would take about 20 min (an estimate).

| measure (held-out shapes) | ALBEF | ALBEF text-only | BLIP | chance |
|---|---|---|---|---|
| masked colour word, all pieces right | 0.990 | 0.139 | - | 0.167 (prior 0.169) |
| masked shape word, all pieces right | 0.614 | 0.255 | - | 0.250 (prior 0.253) |
| masked size word, all pieces right | 0.999 | 0.524 | - | 0.500 (prior 0.563) |
| ITM, matched pairs (score > 0) | 0.951 | 0.000 | 0.971 | 0.5 |
| ITM, shuffled pairs (score <= 0) | 0.997 | 1.000 | 0.998 | 0.5 |
| ITM, mean of both | 0.974 | 0.500 | 0.984 | 0.5 |
| R@1 text->image, ITC | 0.653 | 0.010 | 0.579 | 0.004 |
| R@1 text->image, ITC top 16 re-ranked by ITM | 0.801 | 0.010 | 0.847 | 0.004 |
| R@1 image->text, ITC | 0.548 | 0.001 | 0.509 | 0.004 |
| R@1 image->text, ITC top 16 re-ranked by ITM | 0.762 | 0.001 | 0.812 | 0.004 |

Read: ALBEF fills a masked colour or size word from the image (0.99, 1.00) where the
text-only model stays at the prior (0.14, 0.52); shape is weaker (0.61): at 32 px with 8 px
patches a small shape is about one patch. The text-only ITM head answers "no match" for
every pair (training shows it two negatives per positive, and all its images are equal);
its R@1 above chance is an artefact of ties (equal images rank in index order). Both
matching heads re-rank ITC's top 16 to a better R@1 (+15 to +30 points), BLIP's more.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ATTRIBUTES = ("color", "shape", "size")
CONFIGS = {"albef": "configs/albef_base.py", "blip": "configs/blip_base.py"}
TEXT_ONLY = "albef_text_only"
SEED = 0


# ----------------------------------------------------------------------------- pure helpers

def word_pieces(pieces):
  """Piece indices of each whitespace word of a SentencePiece encoding: a piece that starts
  with U+2581 ("▁") starts a word, the pieces after it until the next such piece continue
  it. [["▁a", "▁tri", "angle"]] -> [[0], [1, 2]]."""
  words = []
  for i, piece in enumerate(pieces):
    if piece.startswith("\u2581") or not words:
      words.append([])
    words[-1].append(i)
  return words


def attribute_words(caption, vocabularies):
  """type -> indices of the caption's whitespace words that are in vocabularies[type]."""
  words = caption.split()
  return {kind: [i for i, w in enumerate(words) if w in names]
          for kind, names in vocabularies.items()}


def shuffled_partners(captions, rng):
  """For each i, an index j != i whose caption differs from captions[i] (a random cyclic
  permutation, redrawn where it pairs two identical captions)."""
  n = len(captions)
  order = rng.permutation(n)
  partner = np.empty(n, np.int64)
  partner[order] = np.roll(order, -1)
  captions = np.asarray(captions, dtype=object)
  for i in np.flatnonzero(captions[partner] == captions):
    while captions[partner[i]] == captions[i]:
      partner[i] = rng.integers(n)
  return partner


def vocabularies():
  from vlp_jax.data import scenes  # pylint: disable=g-import-not-at-top
  return {"color": set(scenes.COLOR_NAMES), "shape": set(scenes.SHAPES),
          "size": set(scenes.SIZE_NAMES)}


def prior(captions):
  """type -> (chance 1/#words, share of the most frequent word among the type's words)."""
  vocab = vocabularies()
  counts = {kind: {w: 0 for w in names} for kind, names in vocab.items()}
  for caption in captions:
    for w in caption.split():
      for kind, names in vocab.items():
        if w in names:
          counts[kind][w] += 1
  return {kind: (1 / len(c), max(c.values()) / sum(c.values())) for kind, c in counts.items()}


# ----------------------------------------------------------------------------- runs

def load_config(name, steps):
  path = CONFIGS["albef" if name == TEXT_ONLY else name]
  spec = importlib.util.spec_from_file_location(f"grounding_{name}_config",
                                                os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("variant=tiny")
  config.train.steps = steps
  if name == TEXT_ONLY:
    config.model.name = TEXT_ONLY
    config.data.eval = ""  # evaluated below, not at the end of training
  return config


def register_text_only():
  """AlbefFamily with every image replaced by zeros (training and evaluation)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  if TEXT_ONLY in families.FAMILIES:
    return

  @families.register(TEXT_ONLY)
  class AlbefTextOnly(families.AlbefFamily):  # pylint: disable=unused-variable

    def features(self, params, batch, rng, state=None):
      return super().features(params, dict(batch, image=jnp.zeros_like(batch["image"])),
                              rng, state)

    def encode_image(self, params, images):
      return super().encode_image(params, jnp.zeros_like(images))

    def image_context(self, params, images):
      return super().image_context(params, jnp.zeros_like(images))


def latest_step(workdir):
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=None)


def train(name, workdir, steps, reuse, log_path):
  """Trains (or reuses) one run; returns the wall seconds spent training (0 when reused)."""
  if reuse and (latest_step(workdir) or 0) >= steps:
    return 0.0
  if not reuse and os.path.exists(workdir):
    shutil.rmtree(workdir)
  start = time.perf_counter()
  if name == TEXT_ONLY:
    from vlp_jax.train import loop  # pylint: disable=g-import-not-at-top
    loop.train(load_config(name, steps), workdir)
  else:
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={CONFIGS[name]}:variant=tiny",
           f"--workdir={workdir}", f"--config.train.steps={steps}",
           "--config.data.eval="]  # evaluated below, not at the end of training
    with open(log_path, "w") as log:
      done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
      with open(log_path) as f:
        tail = f.read()[-3000:]
      raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
  return time.perf_counter() - start


# ----------------------------------------------------------------------------- measures

def masked_attributes(s, params, ev):
  """type -> accuracy of predicting one masked attribute word per held-out caption."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  family, tok = s.family, s.tokenizer
  mask_id = tok.special_id("mask")
  m = family.module

  @jax.jit
  def predict(params, images, tokens):
    context = family.image_context(params, preprocess.normalize_on_device(images))
    tokens = family.prefixed(tokens, "cls")
    fused = family.apply(params, m.fuse, family.apply(params, m.text_hidden, tokens), tokens,
                         context)
    return jnp.argmax(family.apply(params, m.mlm_logits, fused), axis=-1)[:, 1:]  # no [CLS]

  vocab, rng = vocabularies(), np.random.default_rng(SEED)
  rows, images, spans, kinds = [], [], [], []
  encoded = tok.encode(ev.captions)
  for i, caption in enumerate(ev.captions):
    words = word_pieces(tok.sp.encode(caption, out_type=str))
    if len(words) != len(caption.split()):
      raise ValueError(f"Pieces of {caption!r} do not split into its words: {words}")
    for kind, where in attribute_words(caption, vocab).items():
      positions = words[where[rng.integers(len(where))]]
      if positions[-1] >= tok.context_length - 1:
        raise ValueError(f"{caption!r} is truncated at context_length {tok.context_length}")
      row = encoded[i].copy()
      row[positions] = mask_id
      rows.append(row)
      images.append(i)
      spans.append(positions)
      kinds.append(kind)
  rows, images = np.stack(rows), np.asarray(images)
  batch, preds = 256, []
  with sharding.rules_context(), jax.set_mesh(s.mesh):
    for start in range(0, len(rows), batch):
      at = np.minimum(np.arange(start, start + batch), len(rows) - 1)  # one shape, one compile
      preds.append(np.asarray(predict(params, ev.images[images[at]], rows[at])))
  preds = np.concatenate(preds)[:len(rows)]
  correct = np.array([np.array_equal(preds[r, p], encoded[images[r], p])
                      for r, p in enumerate(spans)])
  kinds = np.asarray(kinds)
  return {kind: float(correct[kinds == kind].mean()) for kind in ATTRIBUTES}


def itm_accuracy(encoder, params, ev):
  """(matched, shuffled) accuracies of the ITM head's sign on the held-out pairs."""
  n = len(ev.captions)
  contexts = encoder.contexts(params, ev)
  own = np.arange(n)
  partner = shuffled_partners(ev.captions, np.random.default_rng(SEED))
  matched = encoder.match_pairs(params, contexts, ev.tokens, own, own)
  shuffled = encoder.match_pairs(params, contexts, ev.tokens, own, partner)
  return float(np.mean(matched > 0)), float(np.mean(shuffled <= 0))


def evaluate(name, workdir, steps):
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = load_config(name, steps)
  config.data.eval = "builtin:shapes:test"
  s, state = loop.restore_for_reading(config, workdir)
  (ev,), _ = loop.load_eval_sets(s)
  if ev.text_image is not None or len(ev.images) != len(ev.captions):
    raise ValueError(f"Expected one caption per image in {ev.name}")
  encoder = runner.Encoder(s.family, s.mesh, config.eval.batch_size)
  out = {"step": int(state.step)}
  if name != "blip":
    out.update({f"masked/{k}": v for k, v in masked_attributes(s, state.params, ev).items()})
  out["itm/matched"], out["itm/shuffled"] = itm_accuracy(encoder, state.params, ev)
  out["itm/mean"] = (out["itm/matched"] + out["itm/shuffled"]) / 2
  found = runner.evaluate(encoder, state.params, s.tokenizer, [ev],
                          {"retrieval", "retrieval_itm"}, (), config.eval.itm_top_k)
  for way in ("t2i", "i2t"):
    out[f"itc/{way}_r1"] = found[f"retrieval/{ev.name}/{way}_r1"]
    out[f"itm_rerank/{way}_r1"] = found[f"retrieval_itm/{ev.name}/{way}_r1"]
    out[f"chance/{way}_r1"] = found[f"retrieval/{ev.name}/{way}_r1_chance"]
  s.checkpointer.close()
  return out


def table(results, priors, top_k):
  names = ("albef", TEXT_ONLY, "blip")
  print("| measure (held-out shapes) | ALBEF | ALBEF text-only | BLIP | chance |")
  print("|---|---|---|---|---|")

  def row(label, key, chance):
    cells = [f"{results[n][key]:.3f}" if key in results[n] else "-" for n in names]
    print(f"| {label} | {' | '.join(cells)} | {chance} |")
  words = {"color": "colour", "shape": "shape", "size": "size"}
  for kind in ATTRIBUTES:
    c, p = priors[kind]
    row(f"masked {words[kind]} word, all pieces right", f"masked/{kind}",
        f"{c:.3f} (prior {p:.3f})")
  row("ITM, matched pairs (score > 0)", "itm/matched", "0.5")
  row("ITM, shuffled pairs (score <= 0)", "itm/shuffled", "0.5")
  row("ITM, mean of both", "itm/mean", "0.5")
  chance = results["albef"]
  for way, label in (("t2i", "text->image"), ("i2t", "image->text")):
    row(f"R@1 {label}, ITC", f"itc/{way}_r1", f"{chance[f'chance/{way}_r1']:.3f}")
    row(f"R@1 {label}, ITC top {top_k} re-ranked by ITM", f"itm_rerank/{way}_r1",
        f"{chance[f'chance/{way}_r1']:.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--workdir_root", default=os.path.join(ROOT, "workdirs", "grounding"))
  parser.add_argument("--reuse", action="store_true",
                      help="keep (or resume) runs already in --workdir_root")
  args = parser.parse_args()
  started = time.perf_counter()
  register_text_only()
  os.makedirs(args.workdir_root, exist_ok=True)
  names = ("albef", TEXT_ONLY, "blip")
  workdirs = {n: os.path.join(args.workdir_root, n) for n in names}
  seconds = {}
  for name in names:
    seconds[f"train_s/{name}"] = round(train(name, workdirs[name], args.steps, args.reuse,
                                             os.path.join(args.workdir_root, f"{name}.log")), 1)
    print(f"{name}: trained in {seconds['train_s/' + name]:.0f}s (0: reused)", flush=True)
  eval_start = time.perf_counter()
  results = {n: evaluate(n, workdirs[n], args.steps) for n in names}
  seconds["eval_s"] = round(time.perf_counter() - eval_start, 1)
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = load_config("albef", args.steps)
  priors = prior(sources.from_config(config.data.train, config.data).captions())
  seconds["total_s"] = round(time.perf_counter() - started, 1)
  print()
  table(results, priors, config.eval.itm_top_k)
  trained = ", ".join(f"{n} {seconds['train_s/' + n]:.0f}s" for n in names)
  print(f"\n{args.steps} steps per run; wall time {seconds['total_s']:.0f}s "
        f"(training {trained}; evaluation {seconds['eval_s']:.0f}s)")
  summary = dict(seconds, steps=args.steps)
  for name, values in results.items():
    summary.update({f"{name}/{k}": (round(v, 4) if isinstance(v, float) else v)
                    for k, v in values.items()})
  for kind, (c, p) in priors.items():
    summary[f"chance/masked_{kind}"], summary[f"prior/masked_{kind}"] = round(c, 4), round(p, 4)
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
