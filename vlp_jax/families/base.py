"""The family contract: everything the trainer, checkpoints and evaluators may ask of a model.

A family is a subclass of `Family` registered with `@register("name")`; `model.name` picks
it. The trainer never branches on a family's name or probes it with hasattr: what differs
between families is said here, by methods and declared class attributes.

Required (abstract; registering a class that lacks one fails naming it):
  example_batch(batch_size)       the batch fields, as jax.ShapeDtypeStruct
  host_batch(raw, tokenizer)      those fields built on the host from a raw batch
  init(rng, batch)                the parameters (with logical axis names)
  features(params, batch, rng, state)   per-example outputs, batch dimension first
  loss(params, features, mesh, state)   (scalar, metrics) over the global batch

Optional, with defaults that do nothing:
  check_config(config)            family-specific validation (ValueError naming the field)
  check_tokenizer(tokenizer)      ValueError when the tokenizer lacks what the family reads
  prepare(workdir, reading)       run-level files (a label vocabulary) before the first batch
  run_files(workdir)              those files, which an export copies beside the parameters
  init_state / update_state       non-trainable state (momentum weights, queues, EMAs)
  frozen(params)                  parameters with no gradient and no optimizer state
  constrain(params)               a projection after each update (CLIP's logit clamp)
  encode_image / encode_text / classify / image_context / match / caption / text_nll
                                  what the declared EVALUATIONS need
  answer_features / answer        VQA as generation: what the `vqa` family (families/vqa.py)
                                  fine-tunes and decodes through, for families with a decoder
  image_text_scores(img, txt)     how evaluators score their embeddings (default: dot)
  EVALUATIONS, EXACT_ACCUMULATION, CONTRASTIVE_KIND, USES_TOKENIZER
                                  declarations read by the trainer, validation,
                                  evaluation and describe
  PRETRAINS_ON_PAIRS              whether a run from random initialisation on image-text
                                  pairs alone trains the whole model (False: it needs
                                  another run's parameters, reads no images, or wraps
                                  another family); read by bench/compare_objectives.py
"""
import abc

# What the evaluators know how to run, and the methods each one needs.
EVALUATION_NEEDS = {
    "retrieval": ("encode_image", "encode_text"),
    # ITC's top k re-ranked by a matching head (ALBEF, BLIP)
    "retrieval_itm": ("encode_image", "encode_text", "image_context", "match"),
    "zeroshot_text": ("encode_image", "encode_text"),
    "zeroshot_head": ("classify", "head_classes"),
    "caption": ("caption",),
    "perplexity": ("text_nll",),  # held-out captions under a language model
    "probe": ("encode_image",),
    "vqa": ("answer",),  # questions of eval sets with answers (evaluate/vqa.py)
}
CONTRASTIVE_KINDS = (None, "softmax", "sigmoid")
# The evaluations that read text, so need the tokenizer.
TEXT_EVALUATIONS = ("retrieval", "retrieval_itm", "zeroshot_text", "caption", "perplexity",
                    "vqa")

FAMILIES = {}


class Family(abc.ABC):
  """Base class of model families. Subclasses implement the abstract methods."""

  # Evaluations this family supports (keys of EVALUATION_NEEDS); the runner runs only these.
  EVALUATIONS = frozenset()
  # True when the loss reads the batch only through per-example `features` (and the state
  # is not updated per micro-batch), so train/step.py's feature-gradient accumulation gives
  # the full-batch gradient. False: train.accum_steps > 1 is refused at validation, and
  # `features` always sees the global batch (ALBEF pairs hard negatives across it).
  EXACT_ACCUMULATION = True
  # The contrastive loss's kind for describe's loss-memory estimate (None: no such term).
  CONTRASTIVE_KIND = None
  # Whether the family reads text through the tokenizer. False (CatLIP): no tokenizer is
  # trained or read, host_batch and the evaluators get None.
  USES_TOKENIZER = True
  # Whether the family pretrains on image-text pairs by itself, from random initialisation.
  # False: its frozen parts come from other runs (model.init_from), it reads no images, or
  # it fine-tunes another family's run; a comparison of objectives leaves it out.
  PRETRAINS_ON_PAIRS = True

  def __init__(self, config, eos_id=1):
    """Builds the modules from `config.model`; `eos_id` is the tokenizer's end of text."""
    self.config = config
    self.eos_id = eos_id

  # ---- required -------------------------------------------------------------------------

  @abc.abstractmethod
  def example_batch(self, batch_size):
    """dict name -> jax.ShapeDtypeStruct [batch_size, ...]: every field the step reads.

    Used to initialise, to shard the batch, and to size the model in describe; the
    fields host_batch returns must be exactly these.
    """

  @abc.abstractmethod
  def host_batch(self, raw, tokenizer):
    """dict of numpy arrays (example_batch's fields) from one host batch of records.

    `raw`: `image` float32 [b, S, S, 3], `caption` list of b str, `key` list of b str,
    plus any extra fields the data source provides (labels). Runs on the host, outside
    jit, once per batch (CLIP: tokenises the captions).
    """

  @abc.abstractmethod
  def init(self, rng, batch):
    """The parameters (a dict, boxed with nn.with_logical_partitioning names) for a batch
    of zeros of example_batch's shapes."""

  @abc.abstractmethod
  def features(self, params, batch, rng, state=None):
    """dict of per-example outputs, batch dimension first: all the loss sees of the batch.

    `state`: the family state (init_state), read-only here. Gradient accumulation runs
    this per micro-batch and the loss once on the concatenation.
    """

  @abc.abstractmethod
  def loss(self, params, features, mesh, state=None):
    """(scalar loss, dict of scalar metrics) over the global batch's features."""

  # ---- optional -------------------------------------------------------------------------

  @classmethod
  def check_config(cls, config):
    """ValueError naming the field for values only this family cannot work with (called by
    config_lib.validate after the common checks)."""
    del config

  def check_tokenizer(self, tokenizer):
    """ValueError naming the tokenizer when it cannot serve this family (the fusion
    families' special-symbol ids); called by host_batch, and by a wrapping family."""
    del tokenizer

  def prepare(self, workdir, reading):
    """Run-level files the family needs before its first batch (CatLIP's label
    vocabulary), made or read in workdir like the tokenizer; `reading`: evaluation of an
    existing run, which must write nothing. Called once by train/loop.py's setup."""
    del workdir, reading

  def run_files(self, workdir):
    """{name: path} of the files `prepare` reads: train/export.py copies each to
    EXPORT/name, where prepare(EXPORT, reading=True) must find it (the export's config
    has data.synsets and data.tokenizer cleared)."""
    del workdir
    return {}

  def init_state(self, params):
    """Non-trainable state (a pytree of arrays boxed with logical axis names, or None),
    from the initial parameters, given boxed as init returned them (a copy keeps their
    axis names; nn.meta.unbox them to compute). It is sharded by the same rules as the
    parameters, checkpointed with the train state and restored exactly."""
    del params
    return None

  def update_state(self, state, params, features):
    """The state after a step, inside the jitted step: `params` are the updated
    parameters, `features` the step's (gradient stopped). Kept unchanged on a step that
    is not finite."""
    del params, features
    return state

  def frozen(self, params):
    """A pytree of Python bools like params (True: frozen), or None for nothing frozen;
    decided by paths, never by values (it is called on abstract and traced params).
    Frozen parameters get no gradient, no update and no optimizer state."""
    del params
    return None

  def constrain(self, params):
    """The parameters projected back into their allowed range after each update."""
    return params

  def encode_image(self, params, images):
    """L2-normalised image embeddings [b, D] (retrieval, zero-shot, probes)."""
    raise NotImplementedError(f"{type(self).__name__} has no image encoder")

  def encode_text(self, params, tokens):
    """L2-normalised text embeddings [b, D] (retrieval, zero-shot by text prompts)."""
    raise NotImplementedError(f"{type(self).__name__} has no text encoder")

  def image_text_scores(self, image_emb, text_emb):
    """[I, T] numpy scores of encode_image and encode_text outputs, higher: a better pair
    (retrieval, zero-shot by prompts). Default: cosine similarity, the dot product of the
    normalised embeddings."""
    return image_emb @ text_emb.T

  def classify(self, params, images):
    """Class logits [b, C] of a classification head (zero-shot by head)."""
    raise NotImplementedError(f"{type(self).__name__} has no classification head")

  def head_classes(self, classnames):
    """(rows of the classification head for each class name, the names it cannot score):
    zero-shot by head scores a class by the mean logit of its rows."""
    raise NotImplementedError(f"{type(self).__name__} has no classification head")

  def image_context(self, params, images):
    """What `match` reads of each image ([b, ...], e.g. its tokens): computed once per
    image, then paired with many texts."""
    raise NotImplementedError(f"{type(self).__name__} has no matching head")

  def match(self, params, context, tokens):
    """[b] matching scores (higher: more likely a pair) of image_context rows and texts."""
    raise NotImplementedError(f"{type(self).__name__} has no matching head")

  def text_nll(self, params, tokens):
    """[b, 2]: each text's summed next-token negative log-likelihood and token count."""
    raise NotImplementedError(f"{type(self).__name__} has no language model")

  def answer_features(self, params, images, questions, answers, rng=None):
    """VQA fine-tuning: the answer tokens' next-token loss given image and question, as
    per-example sums: dict lm_nll_sum, lm_tokens, lm_correct [b] (FusionFamily.lm_features:
    the fused vocabulary loss, its gradient spread over the rows). `questions` [b, Lq] and
    `answers` [b, La] int32 in the tokenizer's layout (pieces, EOS, pad 0); the loss covers
    the answer's pieces and its EOS. `rng`: dropout (None: none)."""
    raise NotImplementedError(f"{type(self).__name__} cannot answer questions")

  def answer(self, params, images, questions, max_len):
    """Greedy answer tokens [b, max_len] to `questions` [b, Lq] about `images`, in the
    tokenizer's layout (pieces, EOS, pad 0)."""
    raise NotImplementedError(f"{type(self).__name__} cannot answer questions")

  def caption(self, params, images, rng=None, **options):
    """Caption tokens [b, L] of images in the tokenizer's layout; `options` are the decode
    fields (method, beam_size, ..., max_len) and `prompt`, ids every caption starts with."""
    raise NotImplementedError(f"{type(self).__name__} has no caption decoder")


def missing_parts(cls):
  """Names of the contract parts `cls` lacks, in order; empty when complete."""
  if not (isinstance(cls, type) and issubclass(cls, Family)):
    return ["the Family base class (vlp_jax.families.base.Family)"]
  missing = sorted(getattr(cls, "__abstractmethods__", ()))
  unknown = sorted(set(cls.EVALUATIONS) - set(EVALUATION_NEEDS))
  missing += [f"EVALUATIONS entry {name!r} (known: {sorted(EVALUATION_NEEDS)})"
              for name in unknown]
  for evaluation in sorted(set(cls.EVALUATIONS) & set(EVALUATION_NEEDS)):
    for method in EVALUATION_NEEDS[evaluation]:
      if getattr(cls, method) is getattr(Family, method):
        missing.append(f"{method} (needed by EVALUATIONS entry {evaluation!r})")
  texts = sorted(set(cls.EVALUATIONS) & set(TEXT_EVALUATIONS))
  if texts and not cls.USES_TOKENIZER:
    missing.append(f"USES_TOKENIZER (EVALUATIONS {texts} read text through it)")
  if cls.CONTRASTIVE_KIND not in CONTRASTIVE_KINDS:
    missing.append(f"CONTRASTIVE_KIND in {CONTRASTIVE_KINDS}, not {cls.CONTRASTIVE_KIND!r}")
  return list(dict.fromkeys(missing))


def check(cls, name=None):
  """TypeError in one line naming the first missing part of a family class."""
  missing = missing_parts(cls)
  if missing:
    label = name or getattr(cls, "__name__", repr(cls))
    more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""
    raise TypeError(f"Family {label!r} is missing {missing[0]}{more}")
  return cls


def register(name):
  """Class decorator: adds a complete family to FAMILIES under `name` (model.name)."""
  def add(cls):
    check(cls, name)
    if name in FAMILIES and FAMILIES[name] is not cls:
      raise ValueError(f"Family name {name!r} is already registered by "
                       f"{FAMILIES[name].__name__}")
    FAMILIES[name] = cls
    cls.NAME = name
    return cls
  return add


def get_family(config, eos_id=1):
  """Builds the family named by `config.model.name`.

  `eos_id` is the tokenizer's end-of-text id (where CLIP pools); shapes do not depend on it.
  """
  name = config.model.name
  if name not in FAMILIES:
    raise ValueError(f"Config field 'model.name': unknown family {name!r}; "
                     f"known: {sorted(FAMILIES)}")
  return check(FAMILIES[name], name)(config, eos_id)
