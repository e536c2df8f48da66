"""HF transformers BLIP import (vlp_jax/models/import_hf_blip.py) against transformers itself.

Tiny random BlipForImageTextRetrieval / BlipForConditionalGeneration models are built offline
from a BlipConfig (every weight, biases and LayerNorms included, redrawn so that no slot of
the fused kernels is zero or one), saved with save_pretrained (safetensors) and imported; our
module methods and HF's forward passes then read the same ids (HF's, [CLS] or bos first: no
on-device prefixing) and images. Skipped where the bench extra (torch, transformers) is not
installed.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from tests import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import blip  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import decoding  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import import_hf_blip as ihb  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB, POSITIONS, IMAGE, PATCH, EMBED = 100, 32, 32, 8, 48
CLS, SEP, BOS = 1, 3, 98  # HF: [CLS] first for ITC/ITM, bos ([DEC]) first for the decoder
RTOL = 1e-4


def hf_config():
  return transformers.BlipConfig(
      vision_config=dict(image_size=IMAGE, patch_size=PATCH, hidden_size=64,
                         intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
      text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=POSITIONS, bos_token_id=BOS, sep_token_id=SEP,
                       eos_token_id=SEP, pad_token_id=0),
      image_text_hidden_size=EMBED)


def randomize(model, seed):
  """Every parameter redrawn (tied ones stay tied: parameters() yields them once)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("LayerNorm.weight") or "layer_norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
  return model.eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_blip")
  torch.manual_seed(0)
  retrieval, captioning = helpers.transformers_models("BlipForImageTextRetrieval",
                                                      "BlipForConditionalGeneration")
  ret = randomize(retrieval(hf_config()), 1)
  cap = randomize(captioning(hf_config()), 2)
  ret.save_pretrained(root / "ret")
  cap.save_pretrained(root / "cap")
  assert os.path.exists(root / "ret" / "model.safetensors")
  return {"ret": ret, "cap": cap, "ret_dir": str(root / "ret"), "cap_dir": str(root / "cap")}


def inputs(batch=3, length=12, first=CLS, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32)
  ids = rng.integers(4, BOS, size=(batch, length)).astype(np.int64)
  ids[:, 0] = first
  for row, n in enumerate([length - 1, 7, 4][:batch]):
    ids[row, n] = SEP
    ids[row, n + 1:] = 0
  return images, ids


def torch_images(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def model_config(**extra):
  m = config_lib.base_config().model
  m.update(ihb.hf_config(**extra))
  return m


def close(ours, ref, what):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  err = np.abs(ours - ref)
  rel = np.max(err / np.maximum(np.abs(ref), 1e-6))
  np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * np.max(np.abs(ref)),
                             err_msg=f"{what}: max abs {err.max():.2e} rel {rel:.2e}")
  return err.max()


def hf_retrieval_outputs(model, images, ids):
  with torch.no_grad():
    pix, t_ids = torch_images(images), torch.from_numpy(ids)
    mask = (t_ids != 0).long()
    tokens = model.vision_model(pixel_values=pix).last_hidden_state
    img = torch.nn.functional.normalize(model.vision_proj(tokens[:, 0]), dim=-1)
    txt_hidden = model.text_encoder(input_ids=t_ids, attention_mask=mask).last_hidden_state
    txt = torch.nn.functional.normalize(model.text_proj(txt_hidden[:, 0]), dim=-1)
    itm = model(input_ids=t_ids, pixel_values=pix, attention_mask=mask,
                use_itm_head=True).itm_score
  return img.numpy(), txt.numpy(), itm.numpy()


def hf_lm_logits(model, images, ids):
  with torch.no_grad():
    t_ids = torch.from_numpy(ids)
    return model(pixel_values=torch_images(images), input_ids=t_ids,
                 attention_mask=(t_ids != 0).long()).logits.numpy()


_JITTED = {}


def _fns(m):
  """(retrieval outputs, LM logits) of our Blip under config m, jitted once per config."""
  key = m.to_json()
  if key not in _JITTED:
    module = blip.from_config(m)

    def retrieval(params, images, ids):
      v = {"params": params}
      tokens = module.apply(v, images, method=module.image_tokens)
      return (module.apply(v, tokens, method=module.image_embedding),
              module.apply(v, ids, method=module.text_embedding),
              module.apply(v, ids, tokens, method=module.itm_logits))

    def lm_logits(params, images, ids):
      v = {"params": params}
      tokens = module.apply(v, images, method=module.caption_context)
      return module.apply(v, ids, tokens, method=module.lm_logits)
    _JITTED[key] = (jax.jit(retrieval), jax.jit(lm_logits))
  return _JITTED[key]


def ours_retrieval(params, m, images, ids):
  return [np.asarray(x) for x in _fns(m)[0](params, images, jnp.asarray(ids, jnp.int32))]


def ours_lm_logits(params, m, images, ids):
  return np.asarray(_fns(m)[1](params, images, jnp.asarray(ids, jnp.int32)))


def random_base(m, seed=3):
  """A full parameter tree of random numbers (what a run's init would give), no init."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                      ihb._abstract_params(m))  # pylint: disable=protected-access


def all_pairs(images, ids):
  """Every (image, text) pair: 9 rows from 3 of each."""
  i, t = np.meshgrid(np.arange(len(images)), np.arange(len(ids)), indexing="ij")
  return images[i.reshape(-1)], ids[t.reshape(-1)]


def test_config_from_hf(hf):
  m = ihb.hf_config(hf["ret_dir"], hf["cap_dir"])
  assert dict(m) == dict(
      name="blip", image_size=IMAGE, patch_size=PATCH, vision_width=64, vision_depth=2,
      vision_heads=2, vision_mlp_ratio=4.0, vocab_size=VOCAB, text_width=64, text_depth=2,
      text_heads=4, text_mlp_ratio=4.0, activation="gelu", embed_dim=EMBED,
      context_length=POSITIONS, tie_word_embeddings=True)
  assert ihb.hf_config(caption_path=hf["cap_dir"], context_length=16).context_length == 16
  with pytest.raises(ValueError, match="exceeds"):
    ihb.hf_config(hf["ret_dir"], context_length=POSITIONS + 1)


@pytest.mark.parametrize("scan", [False, True])
def test_retrieval_parity(hf, scan):
  """Image and text embeddings and ITM logits of every pair. The unrolled import fills the
  decoder's parts by a fresh initialisation, the scanned one from base_params."""
  m = model_config(retrieval_path=hf["ret_dir"])
  m.scan = scan
  params = ihb.import_blip(hf["ret_dir"], config_model=m,
                           base_params=random_base(m) if scan else None)
  images, ids = all_pairs(*inputs())
  ours = ours_retrieval(params, m, images, ids)
  refs = hf_retrieval_outputs(hf["ret"], images, ids)
  for o, r, what in zip(ours, refs, ("image embedding", "text embedding", "ITM logits")):
    close(o, r, what)


def test_caption_parity_and_greedy(hf):
  m = model_config(caption_path=hf["cap_dir"])
  m.embed_dim = EMBED  # as with both checkpoints: one compiled LM function for both tests
  params = ihb.import_blip(caption_path=hf["cap_dir"], config_model=m,
                           base_params=random_base(m))
  images, ids = inputs(first=BOS, seed=1)
  keep = ids != 0
  close(np.asarray(ours_lm_logits(params, m, images, ids))[keep],
        hf_lm_logits(hf["cap"], images, ids)[keep], "LM logits")

  # Greedy captions: our KV-cached decoder (decode mode) vs HF generate, pad never chosen.
  steps = 8
  dec = blip.from_config(m, decode=True)
  context = dec.apply({"params": params}, images, method=dec.caption_context)
  _, variables = dec.apply({"params": params}, jnp.zeros((3, steps), jnp.int32), 0, context,
                           method=dec.decode_step, mutable=["cache"])

  def step(cache, last, position):
    logits, variables = dec.apply({"params": params, "cache": cache}, last[:, None], position,
                                  method=dec.decode_step, mutable=["cache"])
    return logits[:, 0], variables["cache"]
  ours = np.asarray(decoding.greedy(step, variables["cache"], 3, steps, BOS, SEP))
  with torch.no_grad():
    theirs = hf["cap"].generate(pixel_values=torch_images(images), max_new_tokens=steps,
                                do_sample=False, num_beams=1, bad_words_ids=[[0]]).numpy()
  theirs = theirs[:, 1:]  # HF's output starts with bos
  n = min(theirs.shape[1], steps)
  np.testing.assert_array_equal(ours[:, :n], theirs[:, :n])


def test_both_checkpoints_shared_from(hf):
  m = model_config(retrieval_path=hf["ret_dir"], caption_path=hf["cap_dir"])
  images, ids = all_pairs(*inputs())
  dec_images, dec_ids = inputs(first=BOS, seed=1)
  keep = dec_ids != 0
  ref_ret = hf_retrieval_outputs(hf["ret"], images, ids)
  ref_lm = hf_lm_logits(hf["cap"], dec_images, dec_ids)[keep]

  params = ihb.import_blip(hf["ret_dir"], hf["cap_dir"], config_model=m)  # shared: retrieval
  # nothing is left out: no base_params, no initialisation
  for ours, ref, what in zip(ours_retrieval(params, m, images, ids), ref_ret,
                             ("image embedding", "text embedding", "ITM logits")):
    close(ours, ref, what)
  lm = np.asarray(ours_lm_logits(params, m, dec_images, dec_ids))[keep]
  assert np.max(np.abs(lm - ref_lm)) > 1e-2  # the decoder reads the retrieval tower etc.

  params = ihb.import_blip(hf["ret_dir"], hf["cap_dir"], config_model=m, shared_from="caption")
  close(np.asarray(ours_lm_logits(params, m, dec_images, dec_ids))[keep], ref_lm, "LM logits")
  # text_proj / itm_head are the retrieval model's, read over the captioning model's layers
  _, _, itm = ours_retrieval(params, m, images, ids)
  assert np.max(np.abs(np.asarray(itm) - ref_ret[2])) > 1e-2


def test_missing_parts_come_from_base_params(hf):
  m = model_config(retrieval_path=hf["ret_dir"])
  base = random_base(m)
  params = ihb.import_blip(hf["ret_dir"], config_model=m, base_params=base)
  for path in (("lm_head", "transform", "kernel"),
               ("text_layers", "layer_1", "causal_attn", "qkv_kernel"),
               ("text_layers", "layer_0", "ln_causal", "scale")):
    a, b = params, base
    for name in path:
      a, b = a[name], b[name]
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(params["text_proj"]["kernel"], base["text_proj"]["kernel"])


def test_errors_are_one_line(hf, tmp_path):
  m = model_config(retrieval_path=hf["ret_dir"])
  bad = dict(m)
  bad["text_heads"] = 2
  with pytest.raises(ValueError, match="model.text_heads"):
    ihb.import_blip(hf["ret_dir"], config_model=bad)
  with pytest.raises(ValueError, match="BlipForConditionalGeneration"):
    ihb.import_blip(caption_path=hf["ret_dir"])
  # a checkpoint without cross-attention (text_config.is_decoder=False) is refused by name
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  sd = load_file(os.path.join(hf["ret_dir"], "model.safetensors"))
  sd = {k: v for k, v in sd.items() if ".crossattention." not in k}
  os.makedirs(tmp_path / "nocross")
  save_file(sd, str(tmp_path / "nocross" / "model.safetensors"))
  with open(os.path.join(hf["ret_dir"], "config.json")) as f:
    config = json.load(f)
  with open(tmp_path / "nocross" / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="missing keys.*crossattention") as info:
    ihb.import_blip(str(tmp_path / "nocross"), config_model=m)
  assert "\n" not in str(info.value)
  config["text_config"]["layer_norm_eps"] = 1e-6
  with open(tmp_path / "nocross" / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="epsilons"):
    ihb.hf_config(str(tmp_path / "nocross"))
