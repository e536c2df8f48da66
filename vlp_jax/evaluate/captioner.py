"""`--mode=caption`: a checkpoint's captions of images, beside the true captions.

Input: `--caption_data`, a data spec (`jsonl:PATH:test`, `builtin:shapes:test`, ...) or a
folder of image files without captions; by default the config's `data.eval` sets. Decoding
follows the config's `decode` fields. Every caption goes to
WORKDIR/captions/<set>_step<N>.jsonl; the first `decode.show` are printed beside their
references.
"""
import json
import os

import jax
import numpy as np
from absl import logging

from vlp_jax import config_lib, data, families
from vlp_jax.data import eval_set
from vlp_jax.data.tf_setup import tf
from vlp_jax.evaluate import caption_metrics, runner
from vlp_jax.train import loop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


class Captioner(runner.Encoder):
  """Jitted, sharded decoding over fixed-size batches (one compile), as the encoders."""

  def __init__(self, family, mesh, batch_size, decode, seed, tokenizer=None):
    super().__init__(family, mesh, batch_size)
    rng = jax.random.PRNGKey(seed)
    options = dict(method=decode.method, beam_size=decode.beam_size,
                   alpha=decode.length_penalty, temperature=decode.temperature,
                   top_k=decode.top_k, top_p=decode.top_p, max_len=decode.max_length)
    if decode.prompt:
      options["prompt"] = prompt_ids(tokenizer, decode.prompt)
    self._caption = self.jit_on_images(
        lambda params, images: family.caption(params, images, rng, **options))

  def captions(self, params, ev):
    """Caption tokens of the usable images of an EvalSet (decoded across hosts)."""
    return self._run_images(self._caption, params, ev)


def prompt_ids(tokenizer, text):
  """The pieces of `text` (decode.prompt), without EOS, padding or a start id: a caption's
  forced beginning. Cut at the first EOS, not by value: padding may be a piece's id
  (clip_bpe pads with 0, its "!")."""
  row = [int(i) for i in tokenizer.encode([text])[0]]
  ids = row[:row.index(tokenizer.eos_id)] if tokenizer.eos_id in row else row
  start = getattr(tokenizer, "start_id", None)
  ids = ids[1:] if ids and start is not None and ids[0] == start else ids
  if not ids:
    raise ValueError(f"Config field 'decode.prompt': {text!r} has no tokens")
  return tuple(ids)


def image_folder(path, config, mesh=None):
  """(name, EvalSet, keys, references=None) of the image files in a folder, sorted by name,
  decoded across hosts as evaluation sets are; unreadable ones are logged and skipped."""
  source = eval_set.FolderSource(path, IMAGE_SUFFIXES)
  layout = None if mesh is None else eval_set.make_layout(mesh, config.eval.batch_size)
  try:
    ev = eval_set.from_source(source, config, None, layout)
  except ValueError as e:
    raise ValueError(f"--caption_data={path!r}: no readable image file "
                     f"({', '.join(IMAGE_SUFFIXES)})") from e
  return ev.name, ev, ev.keys, None


def references(ev):
  """The true captions of each image of an EvalSet."""
  owner = np.arange(len(ev.captions)) if ev.text_image is None else ev.text_image
  refs = [[] for _ in range(ev.num_images)]
  for caption, i in zip(ev.captions, owner):
    refs[i].append(caption)
  return refs


def eval_set_input(spec, s):
  """(name, EvalSet, keys, references per image) of an evaluation data spec."""
  c = s.config
  ev = data.load_eval_set(spec, c, s.tokenizer, data_dir=c.data.data_dir,
                          holdout_percent=c.data.holdout_percent, mesh=s.mesh)
  return ev.name, ev, list(range(ev.num_images)), references(ev)


def evaluate_sets(family, mesh, params, tokenizer, eval_sets, config):
  """Caption metrics of loaded EvalSets (the end of training of a captioning family),
  printing the first `decode.show` captions beside their references."""
  captioner = Captioner(family, mesh, config.eval.batch_size, config.decode, config.seed,
                        tokenizer)
  results = {}
  for ev in eval_sets:
    texts = tokenizer.decode(captioner.captions(params, ev))
    refs = references(ev)
    if jax.process_index() == 0:
      for i in range(min(config.decode.show, len(texts))):
        print(f"[{ev.name} {i}] generated: {texts[i]!r}  true: {refs[i][0]!r}", flush=True)
    results.update(_scores(ev.name, texts, refs, config.seed))
  return results


def caption_checkpoint(config, workdir, step=None, caption_data=None,
                       allow_config_change=False):
  """Captions every input set; returns per set the count, mean length in words and, where
  references exist, BLEU-4 and CIDEr-D (with a random-caption CIDEr-D floor)."""
  s = loop.setup(config, workdir, reading=True, allow_config_change=allow_config_change)
  if "caption" not in s.family.EVALUATIONS:
    able = sorted(n for n, f in families.FAMILIES.items() if "caption" in f.EVALUATIONS)
    raise ValueError(f"Config field 'model.name': {config.model.name!r} has no caption "
                     f"decoder; --mode=caption needs one of {able}")
  restored = s.checkpointer.restore(s.abstract_state, s.shardings, step)
  if restored is None:
    raise ValueError(f"No checkpoint in {s.checkpointer.directory}; train first "
                     f"(--mode=train) or pass --workdir of a trained run")
  state, _ = restored
  s.checkpointer.close()
  step = int(state.step)
  specs = [caption_data] if caption_data else config_lib.eval_specs(config)
  if not specs:
    raise ValueError("Nothing to caption: pass --caption_data or set data.eval")
  captioner = Captioner(s.family, s.mesh, config.eval.batch_size, config.decode, config.seed,
                        s.tokenizer)
  results = {"step": step}
  primary = jax.process_index() == 0
  for spec in specs:
    if tf.io.gfile.isdir(spec) and not tf.io.gfile.exists(os.path.join(spec, "captions.jsonl")):
      name, ev, keys, refs = image_folder(spec, config, s.mesh)
    else:
      name, ev, keys, refs = eval_set_input(spec, s)
    texts = s.tokenizer.decode(captioner.captions(state.params, ev))
    rows = [dict(image=k, caption=t, **({"references": refs[i]} if refs else {}))
            for i, (k, t) in enumerate(zip(keys, texts))]
    if primary:
      _write(workdir, f"{name}_step{step}.jsonl", rows)
      for row in rows[:config.decode.show]:
        print(f"[{name} {row['image']}] generated: {row['caption']!r}"
              + (f"  true: {row['references'][0]!r}" if refs else ""), flush=True)
    results[f"caption/{name}/examples"] = len(rows)
    results[f"caption/{name}/mean_words"] = float(np.mean([len(t.split()) for t in texts]))
    if refs:
      results.update(_scores(name, texts, refs, config.seed))
  return results


def _scores(name, texts, refs, seed):
  """BLEU-4 and CIDEr-D of the generated captions, and, as the floor to beat, CIDEr-D of a
  caption drawn at random from the other images' references."""
  keys = [str(i) for i in range(len(texts))]
  gts = dict(zip(keys, refs))
  out = {f"caption/{name}/bleu4": caption_metrics.bleu(dict(zip(keys, texts)), gts)["bleu4"],
         f"caption/{name}/cider": caption_metrics.cider_d(dict(zip(keys, texts)), gts)}
  if len(refs) > 1:
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, len(refs), size=len(refs))
    drawn = {k: refs[(i + shift[i]) % len(refs)][0] for i, k in enumerate(keys)}
    out[f"caption/{name}/cider_random_caption"] = caption_metrics.cider_d(drawn, gts)
  return out


def _write(workdir, filename, rows):
  folder = os.path.join(workdir, "captions")
  tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(os.path.join(folder, filename), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  logging.info("wrote %d captions to %s", len(rows), os.path.join(folder, filename))
