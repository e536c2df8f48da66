"""open_clip export: the exact inverse of the import, and a folder open_clip itself loads.

Without torch: export then import gives our parameters back bit for bit (both layer
layouts), and what open_clip cannot express is refused by config field. With torch and
open_clip: an open_clip model's tensors survive open_clip -> vlp_jax -> open_clip bit for
bit, and the folder loaded through open_clip's own 'local-dir:' loader computes the same
embeddings as the original and as our Clip.
"""
import importlib
import json
import os
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from vlp_jax import families
from vlp_jax.data import preprocess
from vlp_jax.models import export_open_clip as eoc
from vlp_jax.models import import_open_clip as ioc

VOCAB, CONTEXT, IMAGE, PATCH, EMBED = 100, 16, 32, 8, 48
EOT = VOCAB - 1  # OpenAI's convention: end-of-text is the largest id


def small_config(**overrides):
  """3 image blocks (scanned: 2 in `blocks` + `last_block`) and 2 text blocks."""
  return tiny_config(**{"model.vision_depth": 3, "model.text_depth": 2, **overrides})


def init_params(config, eos_id, seed=0):
  """The tree of the trainer's unboxed family.init, every leaf random float32: LayerNorm
  scales near 1, other leaves N(0, 0.3^2), so activations reach where GELU variants differ
  (init leaves biases and LayerNorms at 0 and 1)."""
  family = families.get_family(config, eos_id=eos_id)
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), family.example_batch(1))
  abstract = nn.meta.unbox(jax.eval_shape(family.init, jax.random.PRNGKey(0), batch))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    value = rng.normal(size=s.shape).astype(np.float32)
    return 1 + 0.1 * value if path[-1].key == "scale" else 0.3 * value
  return jax.tree_util.tree_map_with_path(leaf, abstract)


def random_tokens(batch, context, eos_id, vocab, seed=1):
  """Rows of ids below eos_id, then one eos_id, then zeros."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, min(eos_id, vocab), size=(batch, context)).astype(np.int32)
  for row, n in enumerate(rng.integers(1, context, size=batch)):
    tokens[row, n] = eos_id
    tokens[row, n + 1:] = 0
  return tokens


# ---- without torch ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {"model.scan": False}, {"model.scan": True},
    # open_clip's text_cfg proj_bias and vision_cfg no_ln_pre: other keys.
    {"model.scan": True, "model.text_proj_bias": True, "model.vision_pre_norm": False}])
def test_import_of_export_is_identity(overrides):
  config = small_config(**overrides)
  params = init_params(config, eos_id=config.model.vocab_size - 1)
  state_dict = eoc.open_clip_state_dict(params, config.model)
  assert sorted(state_dict) == sorted(ioc.key_layout(config.model))
  assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in state_dict.values())
  back = ioc.clip_params(state_dict, config.model)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  if config.model.scan:
    encoder = params["image_tower"]["encoder"]
    assert sorted(encoder) == ["blocks", "last_block"]
    assert encoder["blocks"]["attn"]["qkv_kernel"].shape[0] == 2
  if config.model.text_proj_bias:
    assert state_dict["text_projection.weight"].shape == (16, 32)  # [embed, width]
    assert "visual.ln_pre.weight" not in state_dict


def test_layouts_export_the_same_tensors():
  """The scanned tree of the same weights exports to the same state dict as the unrolled."""
  config = small_config()
  unrolled = init_params(config, eos_id=63)
  state_dict = eoc.open_clip_state_dict(unrolled, config.model)
  scanned = ioc.clip_params(state_dict, config.model, scan=True)
  again = eoc.open_clip_state_dict(scanned, config.model)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(again[key], value)


def test_model_config():
  config = small_config(**{"model.activation": "quick_gelu"})
  assert eoc.open_clip_model_config(config.model, eos_id=63) == dict(
      embed_dim=16, quick_gelu=True,
      vision_cfg=dict(image_size=16, layers=3, width=32, patch_size=8, head_width=16,
                      mlp_ratio=4.0),
      text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=2,
                    mlp_ratio=4.0))
  config = small_config(**{"model.activation": "gelu_tanh", "model.text_causal": False,
                           "model.layer_norm_eps": 1e-6, "model.text_proj_bias": True,
                           "model.vision_pre_norm": False})
  model_cfg = eoc.open_clip_model_config(config.model, eos_id=2)
  assert not model_cfg["quick_gelu"]
  assert model_cfg["vision_cfg"] == dict(
      image_size=16, layers=3, width=32, patch_size=8, head_width=16, mlp_ratio=4.0,
      no_ln_pre=True, act_kwargs={"approximate": "tanh"}, norm_kwargs={"eps": 1e-6})
  assert model_cfg["text_cfg"] == dict(
      context_length=8, vocab_size=64, width=32, heads=2, layers=2, mlp_ratio=4.0,
      pool_type="eos", eos_id=2, no_causal_mask=True, proj_bias=True,
      act_kwargs={"approximate": "tanh"}, norm_kwargs={"eps": 1e-6})
  for pool, want in (("last", "last"), ("argmax", None)):  # argmax: open_clip's default
    config = small_config(**{"model.text_pool": pool})
    assert eoc.open_clip_model_config(config.model)["text_cfg"].get("pool_type") == want


@pytest.mark.parametrize("field,value,match", [
    ("model.name", "siglip", "model.name"),
    ("model.image_pool", "map", "model.image_pool"),
    ("model.activation", "relu", "model.activation"),
    ("model.vision_patch_bias", True, "model.vision_patch_bias"),
    ("model.vision_proj", False, "model.vision_proj"),
])
def test_refuses_what_open_clip_cannot_express(field, value, match):
  config = small_config()
  config.model[field.split(".")[1]] = value
  with pytest.raises(ValueError, match=match):
    eoc.open_clip_model_config(config.model, eos_id=63)
  with pytest.raises(ValueError, match=match):
    eoc.open_clip_state_dict({}, config.model)


def test_refuses_bad_eos_and_mismatched_params(tmp_path):
  config = small_config()
  with pytest.raises(ValueError, match="model.text_pool='eos'.*eos_id"):
    eoc.open_clip_model_config(config.model)
  with pytest.raises(ValueError, match="eos_id 64 is outside model.vocab_size=64"):
    eoc.open_clip_model_config(config.model, eos_id=64)
  with pytest.raises(ValueError, match="data.eval_resize"):
    eoc.preprocess_config(config.model, "pad")
  params = init_params(config, eos_id=63)
  params["logit_bias"] = np.float32(-10)  # SigLIP's: open_clip's CLIP layout has no key
  with pytest.raises(ValueError, match=r"without an open_clip key \['logit_bias'\]"):
    eoc.open_clip_state_dict(params, config.model)
  del params["logit_bias"]
  deeper = small_config(**{"model.text_depth": 3})
  with pytest.raises(ValueError, match=r"missing \['text_tower/encoder/block_2/"):
    eoc.open_clip_state_dict(params, deeper.model)
  wider = small_config(**{"model.vision_mlp_ratio": 2.0})
  with pytest.raises(ValueError, match=r"image_tower/encoder/block_0/mlp/fc1/kernel .*"
                                       r"'visual.transformer.resblocks.0.mlp.c_fc.weight'.*"
                                       r"\(32, 128\); config.model makes it \(32, 64\)"):
    eoc.open_clip_state_dict(params, wider.model)
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "x").write_text("")
  with pytest.raises(ValueError, match="exists and is not empty"):
    eoc.write(tmp_path / "taken", params, config.model, eos_id=63)
  with pytest.raises(ValueError, match="Tokenizer file .*nope.model does not exist"):
    eoc.write(tmp_path / "new", params, config.model, [tmp_path / "nope.model"], eos_id=63)
  assert not (tmp_path / "new").exists()  # refused before anything is written


def test_write(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  config = small_config()
  params = init_params(config, eos_id=63)
  folder = tmp_path / "gpt2"
  folder.mkdir()
  (folder / "vocab.json").write_text("{}")
  (tmp_path / "tokenizer.model").write_text("spm")
  out = eoc.write(tmp_path / "export", params, config.model,
                  {"tokenizer": folder, "tokenizer.model": tmp_path / "tokenizer.model"},
                  eos_id=63, eval_resize="squash")
  assert sorted(os.listdir(out)) == ["open_clip_config.json", "open_clip_model.safetensors",
                                     "tokenizer", "tokenizer.model"]
  assert os.listdir(os.path.join(out, "tokenizer")) == ["vocab.json"]
  loaded = st.load_file(os.path.join(out, "open_clip_model.safetensors"))
  want = eoc.open_clip_state_dict(params, config.model)
  assert sorted(loaded) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(loaded[key], value)
  with open(os.path.join(out, "open_clip_config.json")) as f:
    written = json.load(f)
  assert written["model_cfg"] == eoc.open_clip_model_config(config.model, eos_id=63)
  assert written["preprocess_cfg"] == dict(
      size=16, mean=list(preprocess.CLIP_MEAN), std=list(preprocess.CLIP_STD),
      interpolation="bilinear", resize_mode="squash")
  out = eoc.write(tmp_path / "listed", params, config.model, [folder], eos_id=63)
  assert os.listdir(os.path.join(out, "gpt2")) == ["vocab.json"]
  with pytest.raises(ValueError, match="a file named gpt2 is already exported"):
    eoc.write(tmp_path / "twice", params, config.model, [folder, folder], eos_id=63)


# ---- against open_clip ----------------------------------------------------------------------

class _Unavailable(type):
  def __getattr__(cls, name):
    return cls


class _Placeholder(metaclass=_Unavailable):
  def __init__(self, *args, **kwargs):
    raise NotImplementedError("torchvision is not importable here")


def open_clip_with_factory():
  """open_clip with its factory (create_model and the 'local-dir:' loader).

  Where torchvision does not load beside a CPU-only torch (see open_clip_package), the
  factory's image-transform imports get placeholders: create_model never calls them.
  """
  pytest.importorskip("torch")
  try:
    open_clip = ioc.open_clip_package()
  except ImportError:
    pytest.skip("open_clip is not installed")
  try:
    open_clip.factory = importlib.import_module("open_clip.factory")
  except ModuleNotFoundError as e:
    if not (e.name or "").startswith("torchvision"):
      raise
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    for module in (transforms, functional):
      module.__getattr__ = lambda name: _Placeholder
    transforms.__path__ = []
    sys.modules.update({"torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})
    open_clip.factory = importlib.import_module("open_clip.factory")
  return open_clip


@pytest.fixture(scope="module")
def torch_clip():
  open_clip = open_clip_with_factory()
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = open_clip.model.CLIP(
      EMBED, dict(image_size=IMAGE, patch_size=PATCH, width=64, layers=2, head_width=32),
      dict(context_length=CONTEXT, vocab_size=VOCAB, width=64, heads=2, layers=2),
      quick_gelu=True)
  with torch.no_grad():  # open_clip initialises biases and LayerNorms to 0 and 1
    for name, p in model.named_parameters():
      if name != "logit_scale":
        p.add_(0.05 * torch.randn_like(p))
  rng = np.random.default_rng(3)
  images = rng.normal(size=(4, IMAGE, IMAGE, 3)).astype(np.float32)
  tokens = random_tokens(4, CONTEXT, EOT, VOCAB)
  return torch, open_clip, model.eval(), images, tokens


def torch_embeddings(torch, model, images, tokens):
  with torch.no_grad():
    return (model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                               normalize=True).numpy(),
            model.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy())


def our_embeddings(config, params, eos_id, images, tokens):
  module = families.get_family(config, eos_id=eos_id).module
  img, txt, _ = jax.jit(lambda p, i, t: module.apply({"params": p}, i, t))(
      params, images, tokens)
  return np.asarray(img), np.asarray(txt)


def load_exported(open_clip, out):
  """The folder as open_clip's create_model reads it; fails if it finds no weights."""
  return open_clip.factory.create_model("local-dir:" + out, require_pretrained=True).eval()


def imported(original, scan):
  """Our config and parameters of an open_clip state dict (2 heads of 32 per tower)."""
  config = tiny_config()
  config.model.update(ioc.config_from_state_dict(original, 32, 32))
  config.model.scan = scan
  return config, ioc.clip_params(original, config.model)


@pytest.mark.parametrize("scan", [False, True])
def test_open_clip_tensors_survive_the_round_trip(torch_clip, scan):
  _, _, model, _, _ = torch_clip
  original = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  config, params = imported(original, scan)
  exported = eoc.open_clip_state_dict(params, config.model)
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_open_clip_loads_the_folder(tmp_path, torch_clip):
  """Written from the scanned layout, read by open_clip's own 'local-dir:' loader."""
  torch, open_clip, model, images, tokens = torch_clip
  original = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  config, params = imported(original, scan=True)
  out = eoc.write(tmp_path / "export", params, config.model, eos_id=EOT)
  loaded = load_exported(open_clip, out)
  assert loaded.visual.preprocess_cfg["mean"] == list(preprocess.CLIP_MEAN)
  assert loaded.visual.preprocess_cfg["std"] == list(preprocess.CLIP_STD)
  assert float(loaded.logit_scale.detach()) == float(model.logit_scale.detach())
  want_img, want_txt = torch_embeddings(torch, model, images, tokens)
  img, txt = torch_embeddings(torch, loaded, images, tokens)
  np.testing.assert_allclose(img, want_img, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(txt, want_txt, rtol=1e-5, atol=1e-6)
  # Our Clip unrolled: the layouts compute the same (test_import_open_clip), one compile.
  img, txt = our_embeddings(*imported(original, scan=False), EOT, images, tokens)
  np.testing.assert_allclose(img, want_img, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(txt, want_txt, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides,eos_id", [
    # pool_type 'eos' at an id below the largest; eps large enough to tell from 1e-5
    ({"model.activation": "gelu_tanh", "model.layer_norm_eps": 0.1,
      "model.text_proj_bias": True}, 5),
    ({"model.activation": "gelu", "model.text_causal": False, "model.text_pool": "last",
      "model.vision_pre_norm": False}, 63),
])
def test_exported_vlp_jax_clip_matches_in_open_clip(tmp_path, overrides, eos_id):
  """Our randomly initialised Clip, exported with settings OpenAI's CLIP does not use,
  computes the same embeddings in open_clip."""
  open_clip = open_clip_with_factory()
  import torch  # pylint: disable=import-outside-toplevel
  config = small_config(**overrides)
  params = init_params(config, eos_id)
  rng = np.random.default_rng(4)
  images = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
  tokens = random_tokens(4, 8, eos_id, 64, seed=5)
  tokens[:, -1] = np.where(tokens[:, -1] == 0, 63, tokens[:, -1])  # argmax would pool here
  out = eoc.write(tmp_path / "export", params, config.model, eos_id=eos_id)
  loaded = load_exported(open_clip, out)
  want_img, want_txt = our_embeddings(config, params, eos_id, images, tokens)
  img, txt = torch_embeddings(torch, loaded, images, tokens)
  np.testing.assert_allclose(img, want_img, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(txt, want_txt, rtol=1e-4, atol=1e-5)
