"""OpenAI / open_clip checkpoint import against a float64 numpy CLIP and open_clip itself.

The numpy reference is written from OpenAI's key names and torch's conventions (Linear
[out, in], MultiheadAttention's q/k/v row blocks), not from our model, so a wrong split
of the fused attention weights shows up as different embeddings.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax import config_lib
from vlp_jax import families
from vlp_jax.models import import_open_clip as ioc
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding

VOCAB, CONTEXT, IMAGE, PATCH, EMBED = 100, 16, 32, 8, 48
EOT = VOCAB - 1  # OpenAI's end-of-text id is the largest id; both poolings find it


def random_state_dict(vision_width=64, text_width=32, depth=2, mlp_ratio=4, seed=0):
  """An OpenAI-layout state dict with every weight random (biases and LayerNorms too)."""
  rng = np.random.default_rng(seed)
  normal = lambda shape, std: (std * rng.normal(size=shape)).astype(np.float32)
  sd = {}

  def layer_norm(key, width):
    sd[key + ".weight"] = 1 + normal((width,), 0.1)
    sd[key + ".bias"] = normal((width,), 0.1)

  def blocks(prefix, width):
    mlp = mlp_ratio * width
    for i in range(depth):
      b = f"{prefix}transformer.resblocks.{i}."
      layer_norm(b + "ln_1", width)
      layer_norm(b + "ln_2", width)
      sd[b + "attn.in_proj_weight"] = normal((3 * width, width), width ** -0.5)
      sd[b + "attn.in_proj_bias"] = normal((3 * width,), 0.1)
      sd[b + "attn.out_proj.weight"] = normal((width, width), width ** -0.5)
      sd[b + "attn.out_proj.bias"] = normal((width,), 0.1)
      sd[b + "mlp.c_fc.weight"] = normal((mlp, width), width ** -0.5)
      sd[b + "mlp.c_fc.bias"] = normal((mlp,), 0.1)
      sd[b + "mlp.c_proj.weight"] = normal((width, mlp), mlp ** -0.5)
      sd[b + "mlp.c_proj.bias"] = normal((width,), 0.1)

  grid = IMAGE // PATCH
  sd["visual.conv1.weight"] = normal((vision_width, 3, PATCH, PATCH), (3 * PATCH * PATCH) ** -0.5)
  sd["visual.class_embedding"] = normal((vision_width,), 1.0)
  sd["visual.positional_embedding"] = normal((grid * grid + 1, vision_width), 0.5)
  layer_norm("visual.ln_pre", vision_width)
  blocks("visual.", vision_width)
  layer_norm("visual.ln_post", vision_width)
  sd["visual.proj"] = normal((vision_width, EMBED), vision_width ** -0.5)
  sd["token_embedding.weight"] = normal((VOCAB, text_width), 1.0)
  sd["positional_embedding"] = normal((CONTEXT, text_width), 0.5)
  blocks("", text_width)
  layer_norm("ln_final", text_width)
  sd["text_projection"] = normal((text_width, EMBED), text_width ** -0.5)
  sd["logit_scale"] = np.float32(math.log(20.0)).reshape(())
  return sd


def random_inputs(batch=4, seed=1):
  """NHWC images and token rows with one EOT each, smaller ids before it, zeros after."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32)
  tokens = rng.integers(1, EOT, size=(batch, CONTEXT)).astype(np.int32)
  for row, n in enumerate(rng.integers(1, CONTEXT, size=batch)):
    tokens[row, n] = EOT
    tokens[row, n + 1:] = 0
  return images, tokens


# ---- float64 OpenAI CLIP in numpy, from the state dict's keys -------------------------

def _ln(x, sd, key):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * sd[key + ".weight"] + sd[key + ".bias"]


def _linear(x, sd, key):
  return x @ sd[key + ".weight"].T + sd[key + ".bias"]


def _block(x, sd, prefix, heads, causal):
  b, t, width = x.shape
  hd = width // heads
  y = _ln(x, sd, prefix + "ln_1")
  qkv = y @ sd[prefix + "attn.in_proj_weight"].T + sd[prefix + "attn.in_proj_bias"]
  q, k, v = (z.reshape(b, t, heads, hd).transpose(0, 2, 1, 3) for z in np.split(qkv, 3, -1))
  scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
  if causal:
    scores = scores + np.triu(np.full((t, t), -np.inf), 1)
  scores = np.exp(scores - scores.max(-1, keepdims=True))
  attn = (scores / scores.sum(-1, keepdims=True)) @ v
  x = x + _linear(attn.transpose(0, 2, 1, 3).reshape(b, t, width), sd, prefix + "attn.out_proj")
  h = _linear(_ln(x, sd, prefix + "ln_2"), sd, prefix + "mlp.c_fc")
  h = h / (1 + np.exp(-1.702 * h))  # QuickGELU
  return x + _linear(h, sd, prefix + "mlp.c_proj")


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_image(sd, images, heads, depth):
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  b, size, _, _ = images.shape
  p = sd["visual.conv1.weight"].shape[-1]
  g = size // p
  # The stride-p conv as patches (channel, row, column) times the flattened kernel.
  patches = images.astype(np.float64).reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4)
  kernel = sd["visual.conv1.weight"]
  x = patches.reshape(b, g * g, -1) @ kernel.reshape(kernel.shape[0], -1).T
  cls = np.broadcast_to(sd["visual.class_embedding"], (b, 1, x.shape[-1]))
  x = np.concatenate([cls, x], axis=1) + sd["visual.positional_embedding"]
  x = _ln(x, sd, "visual.ln_pre")
  for i in range(depth):
    x = _block(x, sd, f"visual.transformer.resblocks.{i}.", heads, causal=False)
  return _normalize(_ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"])


def reference_text(sd, tokens, heads, depth):
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
  for i in range(depth):
    x = _block(x, sd, f"transformer.resblocks.{i}.", heads, causal=True)
  x = _ln(x, sd, "ln_final")
  pooled = x[np.arange(len(tokens)), tokens.argmax(-1)]  # OpenAI: at the largest token id
  return _normalize(pooled @ sd["text_projection"])


# ---- helpers ----------------------------------------------------------------------------

def make_config(sd, scan=False, text_head_dim=16):
  """Two heads per tower for the default widths (64 image, 32 text)."""
  c = config_lib.base_config()
  c.model.update(ioc.config_from_state_dict(sd, vision_head_dim=32, text_head_dim=text_head_dim))
  c.model.scan = scan
  return config_lib.validate(c)


def forward(config):
  """Jitted (image embeddings, text embeddings, (logit scale,)) of our Clip."""
  module = families.get_family(config, eos_id=EOT).module
  return jax.jit(lambda params, images, tokens: module.apply({"params": params}, images, tokens))


def embeddings(sd, images, tokens, scan=False):
  config = make_config(sd, scan)
  img, txt, (scale,) = forward(config)(ioc.clip_params(sd, config.model), images, tokens)
  return np.asarray(img), np.asarray(txt), float(scale)


@pytest.fixture(scope="module")
def openai_like():
  sd = random_state_dict()
  images, tokens = random_inputs()
  expected = (reference_image(sd, images, heads=2, depth=2),
              reference_text(sd, tokens, heads=2, depth=2))
  return sd, images, tokens, expected


@pytest.fixture(scope="module")
def unrolled(openai_like):
  sd, images, tokens, _ = openai_like
  return embeddings(sd, images, tokens, scan=False)


# ---- tests without torch ------------------------------------------------------------------

def test_matches_numpy_openai_clip(openai_like, unrolled):
  _, _, _, (ref_img, ref_txt) = openai_like
  img, txt, scale = unrolled
  np.testing.assert_allclose(img, ref_img, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(txt, ref_txt, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(scale, 20.0, rtol=1e-6)


def test_reference_sees_a_wrong_split(openai_like):
  """The comparison above is sensitive: swapping q and k, or reading the fused kernel's
  heads in the wrong order, moves the image embeddings far beyond its tolerance."""
  sd, images, tokens, (ref_img, _) = openai_like
  config = make_config(sd)
  good = ioc.clip_params(sd, config.model)
  attn = lambda p: p["image_tower"]["encoder"]["block_0"]["attn"]
  swapped = jax.tree.map(lambda x: x, good)
  attn(swapped)["qkv_kernel"] = attn(good)["qkv_kernel"][:, [1, 0, 2]]
  heads = jax.tree.map(lambda x: x, good)
  w = attn(good)["qkv_kernel"]  # [width, 3, heads, head_dim] read as [.., head_dim, heads]
  attn(heads)["qkv_kernel"] = w.reshape(w.shape[0], 3, w.shape[3], w.shape[2]).swapaxes(2, 3)
  run = forward(config)
  for params in (swapped, heads):
    img, _, _ = run(params, images, tokens)
    assert np.abs(img - ref_img).max() > 1e-2


def test_scan_and_unrolled_agree(openai_like, unrolled):
  sd, images, tokens, _ = openai_like
  scanned = embeddings(sd, images, tokens, scan=True)
  for a, b in zip(unrolled, scanned):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_tree_is_the_trainers_form(openai_like, scan):
  """Same tree and shapes as the trainer's unboxed family.init, float32 leaves."""
  sd = openai_like[0]
  config = make_config(sd, scan)
  family = families.get_family(config, eos_id=EOT)
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), family.example_batch(1))
  init = nn.meta.unbox(jax.eval_shape(lambda: family.init(jax.random.PRNGKey(0), batch)))
  params = ioc.clip_params(sd, config.model)
  assert jax.tree.structure(params) == jax.tree.structure(init)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, init)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))


def test_scan_argument_overrides_config(openai_like):
  sd = openai_like[0]
  config = make_config(sd, scan=False)
  encoder = ioc.clip_params(sd, config.model, scan=True)["text_tower"]["encoder"]
  assert sorted(encoder) == ["blocks", "last_block"]  # the pooled last block runs unscanned
  assert encoder["blocks"]["attn"]["qkv_kernel"].shape == (1, 32, 3, 2, 16)
  assert encoder["last_block"]["attn"]["qkv_kernel"].shape == (32, 3, 2, 16)


def test_config_from_state_dict_recovers_sizes():
  sd = random_state_dict(vision_width=128, text_width=64, depth=3, mlp_ratio=2)
  fields = ioc.config_from_state_dict(sd)
  assert dict(fields) == dict(
      name="clip", image_size=IMAGE, patch_size=PATCH, vision_width=128, vision_depth=3,
      vision_heads=2, vision_mlp_ratio=2.0, vocab_size=VOCAB, context_length=CONTEXT,
      text_width=64, text_depth=3, text_heads=1, text_mlp_ratio=2.0, embed_dim=EMBED,
      activation="quick_gelu", image_pool="cls", text_pool="eos", text_causal=True,
      logit_scale_init=pytest.approx(20.0), logit_scale_max=100.0)
  c = config_lib.base_config()
  c.model.update(fields)
  config_lib.validate(c)
  ioc.clip_params(sd, c.model)  # the inferred sizes are the ones the import needs


def test_partial_config_and_metadata_keys(openai_like):
  """The fields of config_from_state_dict alone suffice; OpenAI's size tensors are skipped."""
  sd = dict(openai_like[0], input_resolution=np.float32(IMAGE), vocab_size=np.float32(VOCAB),
            context_length=np.float32(CONTEXT))
  fields = ioc.config_from_state_dict(sd, vision_head_dim=32, text_head_dim=16)
  params = ioc.clip_params(sd, fields)
  assert params["image_tower"]["encoder"]["block_1"]["attn"]["qkv_kernel"].shape == (64, 3, 2, 32)


def test_bad_shape_names_the_key(openai_like):
  sd = dict(openai_like[0])
  sd["transformer.resblocks.1.mlp.c_fc.bias"] = np.zeros(7, np.float32)
  config = make_config(openai_like[0])
  with pytest.raises(ValueError,
                     match=r"transformer\.resblocks\.1\.mlp\.c_fc\.bias.*\(128,\).*\(7,\)"):
    ioc.clip_params(sd, config.model)


def test_missing_and_unused_keys(openai_like):
  config = make_config(openai_like[0])
  missing = dict(openai_like[0])
  del missing["visual.ln_pre.bias"]
  with pytest.raises(ValueError, match=r"missing keys \['visual\.ln_pre\.bias'\]"):
    ioc.clip_params(missing, config.model)
  extra = dict(openai_like[0], **{"visual.transformer.resblocks.0.ls_1.gamma": np.ones(64)})
  with pytest.raises(ValueError, match=r"unused keys \['visual\.transformer\.resblocks\.0\.ls_1"):
    ioc.clip_params(extra, config.model)
  deeper = make_config(openai_like[0])
  deeper.model.text_depth = 3
  with pytest.raises(ValueError, match=r"missing keys \['transformer\.resblocks\.2\."):
    ioc.clip_params(openai_like[0], deeper.model)


def test_rejects_other_layouts(openai_like):
  config = make_config(openai_like[0])
  config.model.image_pool = "map"
  with pytest.raises(ValueError, match="model.image_pool"):
    ioc.clip_params(openai_like[0], config.model)
  resnet = dict(openai_like[0], **{"visual.layer1.0.conv1.weight": np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match="ResNet"):
    ioc.config_from_state_dict(resnet)


def test_load_npz(tmp_path, openai_like):
  sd = openai_like[0]
  path = tmp_path / "clip.npz"
  np.savez(path, **{"module." + k: v for k, v in sd.items()})
  loaded = ioc.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  for k, v in sd.items():
    assert loaded[k].dtype == np.float32
    np.testing.assert_array_equal(loaded[k], v)


def test_load_safetensors(tmp_path, openai_like):
  st = pytest.importorskip("safetensors.numpy")
  sd = {k: np.ascontiguousarray(v) for k, v in openai_like[0].items()}
  path = str(tmp_path / "clip.safetensors")
  st.save_file({k: v.astype(np.float16) for k, v in sd.items()}, path)
  loaded = ioc.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  assert loaded["visual.proj"].dtype == np.float32
  np.testing.assert_allclose(loaded["visual.proj"], sd["visual.proj"], rtol=1e-3, atol=1e-3)


# ---- against open_clip itself --------------------------------------------------------------

def import_open_clip():
  try:
    return ioc.open_clip_package()
  except ImportError:
    pytest.skip("open_clip is not installed")


@pytest.fixture(scope="module")
def torch_clip():
  torch = pytest.importorskip("torch")
  open_clip = import_open_clip()
  torch.manual_seed(0)
  model = open_clip.model.CLIP(
      EMBED, dict(image_size=IMAGE, patch_size=PATCH, width=64, layers=2, head_width=32),
      dict(context_length=CONTEXT, vocab_size=VOCAB, width=64, heads=2, layers=2),
      quick_gelu=True)
  with torch.no_grad():  # open_clip initialises biases and LayerNorms to 0 and 1
    for name, p in model.named_parameters():
      if name != "logit_scale":
        p.add_(0.05 * torch.randn_like(p))
  return torch, open_clip, model.eval()


def test_matches_open_clip(torch_clip):
  torch, open_clip, model = torch_clip
  images, tokens = random_inputs(batch=8, seed=3)
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  with torch.no_grad():
    want_img = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)), normalize=True)
    want_txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True)
    want_loss = open_clip.loss.ClipLoss()(want_img, want_txt, model.logit_scale.exp())
  config = make_config(sd, text_head_dim=32)
  family = families.get_family(config, eos_id=EOT)
  params = ioc.clip_params(sd, config.model)
  img, txt, _ = forward(config)(params, images, tokens)
  np.testing.assert_allclose(img, want_img.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(txt, want_txt.numpy(), rtol=1e-4, atol=1e-5)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  with sharding.rules_context(), jax.set_mesh(mesh):
    loss, metrics = jax.jit(lambda p, f: family.loss(p, f, mesh))(params, {"img": img, "txt": txt})
  np.testing.assert_allclose(loss, float(want_loss), rtol=1e-4)
  np.testing.assert_allclose(metrics["logit_scale"], float(model.logit_scale.detach().exp()),
                             rtol=1e-6)


def test_load_torch_files(tmp_path, torch_clip):
  torch, _, model = torch_clip
  want = {k: v.numpy() for k, v in model.state_dict().items()}
  path = str(tmp_path / "open_clip.pt")
  torch.save(model.state_dict(), path)
  loaded = ioc.load_state_dict(path)
  assert sorted(loaded) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(loaded[k], v)
  # open_clip's training checkpoints: DDP-prefixed keys under "state_dict".
  path = str(tmp_path / "epoch_1.pt")
  torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
             path)
  assert sorted(ioc.load_state_dict(path)) == sorted(want)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, not gone
def test_load_torchscript_archive(tmp_path):
  """OpenAI's released .pt files are TorchScript archives with float16 weights."""
  torch = pytest.importorskip("torch")

  class Tiny(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_final = torch.nn.LayerNorm(4)
      self.logit_scale = torch.nn.Parameter(torch.tensor(2.5))

    def forward(self, x):
      return self.ln_final(x) * self.logit_scale

  path = str(tmp_path / "ViT-tiny.pt")
  torch.jit.save(torch.jit.script(Tiny().half()), path)
  loaded = ioc.load_state_dict(path)
  assert sorted(loaded) == ["ln_final.bias", "ln_final.weight", "logit_scale"]
  assert loaded["logit_scale"].dtype == np.float32 and loaded["logit_scale"] == 2.5


def test_command_line_writes_a_workdir_that_init_from_reads(tmp_path, openai_like):
  """The import CLI's workdir gives BLIP-2 stage 1 its frozen image tower (the CLIP tower
  minus its last block), exactly."""
  sd, *_ = openai_like
  npz = tmp_path / "clip.npz"
  np.savez(npz, **sd)
  out = tmp_path / "imported"
  flags = ioc.run(str(npz), str(out), vision_head_dim=16, text_head_dim=16)
  assert f"--config.model.init_from={out}" in flags
  with pytest.raises(ValueError, match="exists and is not empty"):
    ioc.run(str(npz), str(out))
  from vlp_jax.train import init_from  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.model.update(dict(ioc.config_from_state_dict(sd, 16, 16)))
  config.model.update({"name": "blip2", "vision_feature_layer": -2, "num_queries": 2,
                       "text_width": 16, "text_depth": 1, "text_heads": 2})
  family = families.get_family(config)
  abstract = jax.eval_shape(family.init, jax.random.PRNGKey(0), family.example_batch(1))
  loaded = init_from.load(str(out), "", nn.meta.unbox(abstract))
  params = ioc.clip_params(sd, ioc.config_from_state_dict(sd, 16, 16))
  tower = {p: v for p, v in loaded.items() if p[0] == "image_tower"}
  assert ("image_tower", "encoder", "block_0", "attn", "qkv_kernel") in tower
  assert not any("block_1" in p or "ln_post" in p or "proj" in p for p in tower)
  for path, value in tower.items():
    want = params
    for key in path:
      want = want[key]
    np.testing.assert_array_equal(value, want)
