"""The Python API: a trained model in three lines, on whatever devices are present.

  import vlp_jax
  model = vlp_jax.load("exports/coca")        # an export, a run's workdir, open_clip:FILE, hf:DIR
  model.zero_shot(["cat.jpg", "dog.png"], ["cat", "dog"]).labels

Images are file paths, PIL images or uint8 arrays ([H, W, 3], or a stack [N, H, W, 3]),
resized and cropped as evaluation does (data.eval_resize); texts are strings. Batching and
padding happen inside: every call runs fixed-size batches (`batch_size`), so one compile
serves all calls. What a family cannot do fails with a message naming the families that can.
"""
import dataclasses
import functools
import io
import os

import flax
import jax
import numpy as np

from vlp_jax import config_lib, families, run_config
from vlp_jax.data import eval_set, preprocess
from vlp_jax.data.tf_setup import tf
from vlp_jax.evaluate import captioner, runner
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import init_from, optimizer, state as state_lib

# What each method needs the family to declare (Family.EVALUATIONS), any one of them.
NEEDS = {
    "encode_images": ("retrieval", "zeroshot_text", "probe"),
    "encode_texts": ("retrieval", "zeroshot_text"),
    "zero_shot": ("zeroshot_text", "zeroshot_head"),
    "retrieve": ("retrieval",),
    "caption": ("caption",),
}


@dataclasses.dataclass
class ZeroShot:
  """Zero-shot classification: `labels` (top class name per image), `indices` [N] and
  `scores` [N, C] (the family's image-text scores, or its head's logits)."""
  labels: list
  indices: np.ndarray
  scores: np.ndarray


@dataclasses.dataclass
class Retrieval:
  """Per query, the `top_k` best gallery items: `indices` [Q, k] and `scores` [Q, k]."""
  indices: np.ndarray
  scores: np.ndarray


def load(path, step=None, config=None, tokenizer=None, batch_size=32, devices=None):
  """A Model of an export (train/export.py), a run's workdir, or an imported checkpoint.

  path: an export folder, a run's workdir (its config.json, or `config`), `open_clip:FILE`
    or `hf:DIR` (their config is read from the weights; pass `config` to override, and
    `tokenizer` as data.tokenizer takes it: clip_bpe:PATH or spm:PATH).
  step: a run's checkpoint step (default: the latest).
  batch_size: rows per compiled batch (rounded to a multiple of the devices).
  devices: the devices to use (default: all); the model is replicated on them.
  """
  kind, where = init_from.scheme_path(path)
  imported = kind in init_from.IMPORTED
  workdir = "" if imported else where  # a run's or an export's folder
  if config is None:
    config = _imported_config(path) if imported else run_config.read(workdir)
  config = config.copy_and_resolve_references()
  if tokenizer is not None:
    config.data.tokenizer = tokenizer
  config.model.init_from = config.model.init_from_map = ""
  config.mesh.data, config.mesh.fsdp, config.mesh.model = -1, 1, 1
  config_lib.validate(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  tok = _tokenizer(config, workdir, path)
  family = families.get_family(config, tok.eos_id if tok else 1)
  family.prepare(workdir, reading=True)
  tx, _ = optimizer.make(config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  spec = path if step is None or imported else f"{path}:{step}"
  loaded = init_from.load(spec, "", abstract.params, config.model)
  flat = flax.traverse_util.flatten_dict(abstract.params)
  missing = sorted(set(flat) - set(loaded))
  if missing:
    raise ValueError(f"{path} has no {'/'.join(missing[0])} (and {len(missing) - 1} more "
                     f"parameters of a {config.model.name!r} model)")
  params = flax.traverse_util.unflatten_dict(
      {p: np.asarray(loaded[p], flat[p].dtype) for p in flat})
  params = jax.device_put(params, sharding.named(mesh, specs.params))
  return Model(config, family, params, tok, mesh, batch_size, source=path)


def _imported_config(path):
  kind, rest = init_from.scheme_path(path)
  if kind == "open_clip":
    from vlp_jax.models import import_open_clip  # pylint: disable=g-import-not-at-top
    fields = import_open_clip.config_for(rest)
  else:
    from vlp_jax.models import import_hf_clip  # pylint: disable=g-import-not-at-top
    fields = import_hf_clip.config_from_hf(rest)
  config = config_lib.base_config()
  config.model.update(dict(fields))
  return config


def _tokenizer(config, workdir, path):
  """The model's tokenizer: the run's or export's; for an open_clip folder that an export
  wrote, the tokenizer/ copy beside its weights; else data.tokenizer must name one."""
  if not families.FAMILIES[config.model.name].USES_TOKENIZER:
    return None
  kind, rest = init_from.scheme_path(path)
  if kind == "open_clip" and not config.data.tokenizer:
    from vlp_jax.models import import_open_clip  # pylint: disable=g-import-not-at-top
    folder = os.path.join(os.path.dirname(import_open_clip.checkpoint_file(rest)), "tokenizer")
    if os.path.isdir(folder):
      config.data.tokenizer = folder
  if kind in init_from.IMPORTED and not config.data.tokenizer:
    raise ValueError(f"An imported {config.model.name!r} model reads its own vocabulary: pass "
                     f"tokenizer='clip_bpe:PATH' (CLIP) or 'spm:PATH' (SigLIP)")
  from vlp_jax import data  # pylint: disable=g-import-not-at-top
  return data.get_tokenizer(config, workdir, reading=True)


def _able(evaluations):
  return sorted(name for name, cls in families.FAMILIES.items()
                if set(cls.EVALUATIONS) & set(evaluations))


def _image_array(image, size, mode):
  """uint8 [size, size, 3] of a path, PIL image or uint8 array, as evaluation resizes."""
  if isinstance(image, (str, os.PathLike)):
    if not tf.io.gfile.exists(str(image)):
      raise ValueError(f"Image file {image} does not exist")
    with tf.io.gfile.GFile(str(image), "rb") as f:
      data = f.read()
    try:
      return preprocess.eval_image(data, size, mode).numpy()
    except tf.errors.InvalidArgumentError:
      raise ValueError(f"Image file {image} is not an image tf can decode") from None
  if hasattr(image, "convert") and hasattr(image, "save"):  # PIL
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return preprocess.eval_image(buffer.getvalue(), size, mode).numpy()
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
    raise ValueError(f"An image array must be uint8 [H, W, 3], not {array.dtype} "
                     f"{list(array.shape)}")
  return preprocess.eval_array(array, size, mode).numpy()


class Model:
  """A loaded model: encoders, zero-shot classification, retrieval and captions."""

  def __init__(self, config, family, params, tokenizer, mesh, batch_size=32, source=""):
    self.config, self.family, self.params = config, family, params
    self.tokenizer, self.mesh, self.source = tokenizer, mesh, source
    self.batch_size = batch_size
    self.name = config.model.name

  def __repr__(self):
    return (f"Model({self.name!r} from {self.source!r}, "
            f"{sum(x.size for x in jax.tree.leaves(self.params)) / 1e6:.1f}M parameters, "
            f"{mesh_lib.describe(self.mesh)})")

  def _require(self, method):
    needs = NEEDS[method]
    if not set(self.family.EVALUATIONS) & set(needs):
      raise ValueError(f"A {self.name!r} model cannot {method}; the families that can: "
                       f"{', '.join(_able(needs))}")

  @functools.cached_property
  def _encoder(self):
    return runner.Encoder(self.family, self.mesh, self.batch_size)

  def images(self, images):
    """uint8 [N, S, S, 3]: the inputs as the model sees them (before normalisation)."""
    m, mode = self.config.model, self.config.data.eval_resize
    if isinstance(images, np.ndarray) and images.ndim == 4:
      images = list(images)
    elif isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
      images = [images]
    if not images:
      raise ValueError("No image given")
    return np.stack([_image_array(image, m.image_size, mode) for image in images])

  def _set(self, images):
    """An in-memory EvalSet of the images: what the evaluators' batching reads."""
    arrays = self.images(images)
    n = len(arrays)
    return eval_set.EvalSet(name="input", images=arrays, tokens=None, captions=[], labels={},
                            zeroshot_tasks={}, skipped={}, positions=np.arange(n),
                            valid=np.ones(n, bool))

  def _texts(self, texts):
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
      raise ValueError("No text given")
    return texts

  def encode_images(self, images):
    """float32 [N, D]: L2-normalised image embeddings."""
    self._require("encode_images")
    return self._encoder.images(self.params, self._set(images))

  def encode_texts(self, texts):
    """float32 [N, D]: L2-normalised text embeddings."""
    self._require("encode_texts")
    return self._encoder.texts(self.params, self.tokenizer.encode(self._texts(texts)))

  def zero_shot(self, images, class_names, templates=("a photo of a {}.",), ensemble="mean"):
    """Classifies images among `class_names`: by prompts (each template's '{}' filled with a
    class name, combined as `ensemble` says: mean or max), or by the classification head of
    families that have one (CatLIP; templates unused)."""
    self._require("zero_shot")
    names = self._texts(class_names)
    task = _Task(names, list(templates), ensemble)
    ev = self._set(images)
    if "zeroshot_text" in self.family.EVALUATIONS:
      image_emb = self._encoder.images(self.params, ev)
      scores = runner.class_scores(self._encoder, self.params, self.tokenizer, task, image_emb)
    else:
      logits = self._encoder.class_logits(self.params, ev)
      scores, _ = runner.head_scores(self._encoder, logits, task)
    indices = np.argmax(scores, axis=1)
    return ZeroShot([names[i] for i in indices], indices, np.asarray(scores))

  def retrieve(self, texts, images, top_k=5, query="text"):
    """The `top_k` best images for each text (query="text") or texts for each image
    (query="image"), by the family's image-text scores."""
    self._require("retrieve")
    if query not in ("text", "image"):
      raise ValueError(f"query={query!r}: text or image")
    image_emb = self.encode_images(images)
    text_emb = self.encode_texts(texts)
    scores = self.family.image_text_scores(image_emb, text_emb)
    scores = scores.T if query == "text" else scores
    k = min(top_k, scores.shape[1])
    indices = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return Retrieval(indices, np.take_along_axis(scores, indices, axis=1))

  def caption(self, images, method="greedy", **decode):
    """Captions (str) of images; `method` greedy, beam or sample and the other config
    `decode` fields (beam_size, length_penalty, temperature, top_k, top_p, max_length,
    prompt) as keyword arguments."""
    self._require("caption")
    return self.tokenizer.decode(self._captioner(method, **decode).captions(
        self.params, self._set(images)))

  @functools.lru_cache(maxsize=8)
  def _captioner(self, method, **decode):
    options = self.config.decode.copy_and_resolve_references()
    options.method = method
    for key, value in decode.items():
      if key not in options:
        raise ValueError(f"Unknown decode option {key!r}; known: {sorted(options)}")
      options[key] = value
    check = self.config.copy_and_resolve_references()
    check.decode = options
    config_lib.validate(check)
    return captioner.Captioner(self.family, self.mesh, self.batch_size, options,
                               self.config.seed, self.tokenizer)

  def eval_set(self, spec, max_examples=0):
    """An evaluation set (e.g. builtin:shapes:test) read with this model's config and
    tokenizer: images (uint8), captions, labels and zero-shot tasks (classnames, templates)."""
    c = self.config.copy_and_resolve_references()
    c.eval.max_examples = max_examples
    return eval_set.load_eval_set(spec, c, self.tokenizer, data_dir=c.data.data_dir,
                                  holdout_percent=c.data.holdout_percent)


@dataclasses.dataclass
class _Task:
  classnames: list
  templates: list
  ensemble: str
