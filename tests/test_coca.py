"""CoCa: causal halves without leaks, an image-blind text embedding, the loss against a
float64 reference, 1 vs 8 devices (data, fsdp, tensor parallel), video pooling, and the
CoCa-Base parameter count."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from tests.test_models import load_config
from tests.test_train_step import assert_same, run_steps
from vlp_jax import families
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import describe

COCA = {"model.name": "coca", "model.num_decoder_queries": 4, "model.multimodal_depth": 1}


# open_clip's CoCa: class-token image embedding, decoder on the patch tokens, its layer order.
OPEN_CLIP_LAYOUT = {"model.coca_pooling": "cls", "model.multimodal_layer": "open_clip"}


@pytest.fixture(scope="module", params=["paper", "open_clip"])
def coca(request):
  config = tiny_config(**COCA, **(OPEN_CLIP_LAYOUT if request.param == "open_clip" else {}))
  family = families.get_family(config, eos_id=1)
  batch = random_batch(config)
  params = jax.jit(lambda b: nn.meta.unbox(family.init(jax.random.PRNGKey(0), b)))(batch)
  def forward(p, images, tokens):
    """(img, txt, full logits, scale): the training forward's outputs with the logits that
    its fused loss never materialises."""
    img, txt, _, scale = family.module.apply({"params": p}, images, tokens)
    logits = family.module.apply({"params": p}, images, tokens, method=family.module.logits)
    return img, txt, logits, scale
  return family, params, batch, jax.jit(forward)


def test_unimodal_half_has_no_future_leak(coca):
  """Unimodal output at decoder position t (token t-1; position 0 is the start symbol)
  does not depend on later tokens; the CLS output at the end sees the whole caption."""
  family, params, batch, _ = coca
  unimodal = jax.jit(lambda p, tokens: family.module.apply(
      {"params": p}, tokens, method=lambda m, t: m.text_decoder.unimodal_tokens(t)))
  tokens = jnp.asarray(batch["tokens"][:4])
  out = unimodal(params, tokens)
  length = tokens.shape[1]
  for t in range(length - 1):
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % 60 + 2)
    out2 = unimodal(params, changed)
    np.testing.assert_array_equal(out[:, :t + 1], out2[:, :t + 1])
    assert not np.allclose(out[:, t + 1], out2[:, t + 1]), "the change must matter"
    assert not np.allclose(out[:, -1], out2[:, -1]), "the CLS token sees every token"


def test_multimodal_half_has_no_future_leak(coca):
  """logits[:, t] predict tokens[:, t] and must not see it or anything after it."""
  _, params, batch, forward = coca
  images, tokens = jnp.asarray(batch["image"][:4]), jnp.asarray(batch["tokens"][:4])
  logits = forward(params, images, tokens)[2]
  for t in range(tokens.shape[1] - 1):
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % 60 + 2)
    logits2 = forward(params, images, changed)[2]
    np.testing.assert_array_equal(logits[:, :t + 1], logits2[:, :t + 1])
    assert not np.allclose(logits[:, t + 1], logits2[:, t + 1]), "the change must matter"


def test_text_embedding_does_not_depend_on_the_image(coca):
  family, params, batch, forward = coca
  images, tokens = jnp.asarray(batch["image"]), jnp.asarray(batch["tokens"])
  img, txt, logits, _ = forward(params, images, tokens)
  img2, txt2, logits2, _ = forward(params, -images[::-1], tokens)
  np.testing.assert_array_equal(txt, txt2)
  assert not np.allclose(img, img2) and not np.allclose(logits, logits2)
  grad = jax.grad(lambda im: jnp.sum(forward(params, im, tokens)[1] ** 2 * 3.0))(images)
  assert not np.any(grad)
  np.testing.assert_allclose(jax.jit(family.encode_text)(params, tokens), txt, rtol=1e-5,
                             atol=1e-6)


def _reference_loss(img, txt, logits, scale, tokens, caption_weight=2.0):
  """CoCa's loss in float64 numpy: symmetric InfoNCE + weight * token-mean CE, pads masked."""
  img, txt, logits = (np.asarray(x, np.float64) for x in (img, txt, logits))
  sim = float(scale) * img @ txt.T
  def nll(s):
    s = s - s.max(axis=1, keepdims=True)
    return np.log(np.exp(s).sum(axis=1)) - np.diag(s)
  contrastive = (nll(sim).mean() + nll(sim.T).mean()) / 2
  z = logits - logits.max(axis=-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  token_nll = -np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  mask = tokens != 0
  caption = token_nll[mask].sum() / mask.sum()
  accuracy = (logits.argmax(axis=-1) == tokens)[mask].mean()  # padding counts for nothing
  return contrastive + caption_weight * caption, contrastive, caption, accuracy


def test_loss_matches_float64_reference(coca):
  family, params, batch, forward = coca
  img, txt, logits, scale = forward(params, batch["image"], batch["tokens"])
  expected, contrastive, caption, accuracy = _reference_loss(img, txt, logits, scale,
                                                             batch["tokens"])
  mesh = mesh_lib.make_mesh(family.config.mesh, jax.devices()[:1])

  @jax.jit
  def loss(p, b):
    return family.loss(p, family.features(p, b, None), mesh)
  with sharding.rules_context(), jax.set_mesh(mesh):
    value, metrics = loss(params, batch)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["contrastive_loss"], contrastive, rtol=1e-5)
  np.testing.assert_allclose(metrics["caption_loss"], caption, rtol=1e-5)
  np.testing.assert_allclose(metrics["caption_accuracy"], accuracy, rtol=1e-6)


def test_caption_accuracy_ignores_padding(coca):
  """A head biased to always say pad (id 0) is right at every padded position and wrong
  at every real token: its accuracy is 0."""
  family, params, batch, _ = coca
  assert np.any(batch["tokens"] == 0)
  params = jax.tree.map(lambda x: x, params)
  head = params["text_decoder"]["output"]
  head["bias"] = head["bias"].at[0].add(1e4)
  mesh = mesh_lib.make_mesh(family.config.mesh, jax.devices()[:1])
  with sharding.rules_context(), jax.set_mesh(mesh):
    _, metrics = jax.jit(lambda p, b: family.loss(p, family.features(p, b, None), mesh))(
        params, batch)
  assert float(metrics["caption_accuracy"]) == 0.0


def _variant(layout):
  return dict(COCA, **(OPEN_CLIP_LAYOUT if layout == "open_clip" else {}))


@pytest.fixture(scope="module")
def one_device_steps():
  """layout -> the 1-device steps, run once for all the multi-device tests."""
  cache = {}
  def get(layout):
    if layout not in cache:
      cache[layout] = run_steps(tiny_config(**_variant(layout), **{"mesh.data": 1}),
                                jax.devices()[:1])
    return cache[layout]
  return get


@pytest.mark.parametrize("layout", ["paper", "open_clip"])
def test_one_and_eight_devices_agree(layout, one_device_steps):
  """Data x fsdp sharding, the ring loss and 2 micro-batches (both loss terms split into
  per-example sums, the fused vocabulary loss inside the accumulation's vjp) give the
  single-device step."""
  sharded = run_steps(tiny_config(**_variant(layout), **{"mesh.data": 2, "mesh.fsdp": 4,
                                                         "loss.contrastive": "ring",
                                                         "train.accum_steps": 2}),
                      jax.devices())
  assert_same(sharded, one_device_steps(layout))


def test_tensor_parallel_matches_one_device(one_device_steps):
  """fsdp=4 x model=2: the vocabulary head's kernel split over fsdp on D and over model
  on V, so its loss combines each chunk's statistics over the two vocabulary slices and
  sums d_hidden over them; the step is the 1-device one."""
  config = tiny_config(**COCA, **{"mesh.data": 1, "mesh.fsdp": 4, "mesh.model": 2})
  assert_same(run_steps(config, jax.devices()), one_device_steps("paper"))


def test_video_pools_space_time_tokens(coca):
  """A video of T copies of a frame pools like the frame (duplicated keys keep attention
  weights' proportions); frame-mean embeddings too; different frames change the result."""
  family, params, batch, _ = coca
  if family.config.model.coca_pooling == "cls":
    with pytest.raises(ValueError, match="coca_pooling"):
      family.encode_image(params, jnp.zeros((1, 2) + batch["image"].shape[1:]))
    return
  encode_image, encode_frames = jax.jit(family.encode_image), jax.jit(family.encode_video_frames)
  frame = jnp.asarray(batch["image"][:3])
  still = jnp.repeat(frame[:, None], 4, axis=1)
  image_emb = encode_image(params, frame)
  np.testing.assert_allclose(encode_image(params, still), image_emb, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(encode_frames(params, still), image_emb, rtol=1e-4,
                             atol=1e-5)
  moving = still.at[:, 1:].set(jnp.asarray(batch["image"][3:6])[:, None])
  pooled = encode_image(params, moving)
  assert not np.allclose(pooled, image_emb, atol=1e-3)
  np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, rtol=1e-5)


def test_coca_base_matches_paper_parameter_count():
  summary = describe.describe(load_config("coca_base"), num_devices=256)
  assert abs(summary["params_total"] - 383e6) / 383e6 < 0.05
  assert abs(summary["params/image_tower"] - 86e6) / 86e6 < 0.01
  assert abs(summary["params/text_decoder"] - 297e6) / 297e6 < 0.01
  tiny = describe.describe(load_config("coca_base", "variant=tiny"), num_devices=1)
  assert tiny["params_total"] < 2e6
