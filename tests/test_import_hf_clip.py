"""HF CLIP / SigLIP import (vlp_jax/models/import_hf_clip.py) against transformers itself.

Tiny random CLIPModel and SiglipModel are built offline, every weight redrawn (LayerNorms,
biases, the MAP probe, logit scale and bias included), saved with save_pretrained
(safetensors), imported, and run through our clip / siglip families: normalised image and
text embeddings and the logits must be transformers' own. The CLIP text tower pools at its
eos_token_id (50, not the largest id, so the first-eos rule is what is tested) and, with an
old config's eos_token_id 2, at the largest id. Skipped where the bench extra (torch,
transformers) is not installed.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import flax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax import families  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import import_hf_blip  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import import_hf_clip as ihc  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.train import init_from  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB, CONTEXT, IMAGE, PATCH, BATCH = 100, 16, 32, 8, 3
EOS = 50  # CLIP's eos_token_id here: inside the vocabulary, not its largest id
RTOL, ATOL = 1e-4, 1e-5


def model_classes():
  return helpers.transformers_models("CLIPModel", "SiglipModel")


def hf_configs():
  clip = transformers.CLIPConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=80,
                       num_hidden_layers=2, num_attention_heads=2,
                       max_position_embeddings=CONTEXT, eos_token_id=EOS, bos_token_id=98,
                       pad_token_id=0),
      vision_config=dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                         num_attention_heads=4, image_size=IMAGE, patch_size=PATCH),
      projection_dim=48)
  siglip = transformers.SiglipConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=2,
                       max_position_embeddings=CONTEXT, eos_token_id=1, bos_token_id=None,
                       pad_token_id=1),
      vision_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, image_size=IMAGE, patch_size=PATCH))
  return {"clip": clip, "siglip": siglip}


def randomize(model, seed):
  """Every parameter redrawn; the logit scale and bias set away from their inits."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "logit_scale":
        p.fill_(np.log(7.0))
      elif name == "logit_bias":
        p.fill_(-3.0)
      elif p.ndim == 1 and "norm" in name:  # LayerNorm scales and biases
        p.copy_((name.endswith("weight")) + 0.1 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) * float(np.prod(p.shape[1:])) ** -0.5)
  return model.eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  classes = dict(zip(("clip", "siglip"), model_classes()))
  out = {}
  for seed, (kind, config) in enumerate(hf_configs().items()):
    torch.manual_seed(seed)
    model = randomize(classes[kind](config), seed)
    directory = str(tmp_path_factory.mktemp(kind))
    model.save_pretrained(directory, safe_serialization=True)
    out[kind] = dict(model=model, dir=directory, fields=ihc.config_from_hf(directory))
  # The same CLIP weights under an old config (eos_token_id 2: pooled at the largest id).
  old = str(tmp_path_factory.mktemp("clip_old"))
  shutil.copy(os.path.join(out["clip"]["dir"], "model.safetensors"), old)
  with open(os.path.join(out["clip"]["dir"], "config.json")) as f:
    config = json.load(f)
  config["text_config"]["eos_token_id"] = 2
  with open(os.path.join(old, "config.json"), "w") as f:
    json.dump(config, f)
  out["clip_old"] = dict(out["clip"], dir=old, fields=ihc.config_from_hf(old))
  return out


def inputs(kind, seed=0):
  """NHWC images and token rows as HF's tokenizers lay them out (module docstring)."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
  tokens = np.zeros((BATCH, CONTEXT), np.int32)
  for row, n in enumerate((3, 9, CONTEXT - 2)):
    pieces = rng.integers(2, 97, size=n)
    pieces[pieces == EOS] = EOS + 1
    if kind == "siglip":  # pieces, </s> (1), padded with </s>
      tokens[row] = 1
      tokens[row, :n] = pieces
    else:  # [SOT] pieces [EOT], padded with 0 (or with EOT, as OpenAI's HF tokenizer)
      eot = 99 if kind == "clip_old" else EOS
      tokens[row, 0], tokens[row, 1:n + 1], tokens[row, n + 1:] = 98, pieces, eot
      if row == 0:
        tokens[row, n + 2:] = 0
  return images, tokens


def hf_outputs(model, kind, images, tokens):
  """Normalised image and text embeddings and logits_per_text; "clip_old" runs the CLIP
  model as its old config builds it (CLIPTextModel reads eos_token_id when called)."""
  if kind == "clip_old":
    model.text_model.eos_token_id = 2
  try:
    with torch.no_grad():
      out = model(input_ids=torch.from_numpy(tokens).long(),
                  pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  finally:
    if kind == "clip_old":
      model.text_model.eos_token_id = EOS
  return [out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_text.numpy()]


def family_for(fields, scan):
  config = config_lib.base_config()
  config.model.update(dict(fields))
  config.model.scan = scan
  config_lib.validate(config)
  return families.get_family(config, eos_id=EOS)


def our_outputs(family, params, images, tokens):
  def fn(p, i, t):
    img, txt, scalars = family.module.apply({"params": p}, i, t)
    logits = scalars[0] * txt @ img.T
    return img, txt, logits + scalars[1] if len(scalars) == 2 else logits
  return [np.asarray(x) for x in jax.jit(fn)(params, images, tokens)]


def max_differences(ours, theirs):
  abs_diff = [float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)]
  rel_diff = [float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3)))
              for a, b in zip(ours, theirs)]
  return abs_diff, rel_diff


@pytest.mark.parametrize("kind,scan", [("clip", False), ("clip", True), ("siglip", False),
                                       ("siglip", True), ("clip_old", False)])
def test_matches_transformers(hf, kind, scan):
  h = hf[kind]
  family = family_for(h["fields"], scan)
  params = ihc.params_from_hf(h["dir"], h["fields"], scan=scan)
  abstract = nn.meta.unbox(jax.eval_shape(family.init, jax.random.PRNGKey(0),
                                          family.example_batch(1)))
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)
  images, tokens = inputs(kind)
  theirs = hf_outputs(h["model"], kind, images, tokens)
  ours = our_outputs(family, params, images, tokens)
  print(kind, "scan" if scan else "unrolled", "max abs, rel (image, text, logits):",
        *max_differences(ours, theirs))
  for name, a, b in zip(("image embedding", "text embedding", "logits"), ours, theirs):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)


def test_config_from_hf(hf):
  clip, siglip = hf["clip"]["fields"], hf["siglip"]["fields"]
  assert (clip.name, clip.text_pool, clip.image_pool, clip.activation) == (
      "clip", "eos", "cls", "quick_gelu")
  assert (clip.vision_width, clip.text_width, clip.embed_dim, clip.context_length) == (
      64, 32, 48, CONTEXT)
  assert int(clip.text_width * clip.text_mlp_ratio) == 80
  assert np.isclose(clip.logit_scale_init, np.exp(2.6592))
  assert (clip.layer_norm_eps, clip.vision_pre_norm, clip.vision_proj) == (1e-5, True, True)
  assert hf["clip_old"]["fields"].text_pool == "argmax"
  assert (siglip.name, siglip.text_pool, siglip.image_pool, siglip.text_causal) == (
      "siglip", "last", "map", False)
  assert (siglip.activation, siglip.layer_norm_eps, siglip.embed_dim) == ("gelu_tanh", 1e-6, 64)
  assert (siglip.vision_patch_bias, siglip.vision_pre_norm, siglip.vision_proj,
          siglip.text_proj_bias) == (True, False, False, True)
  config = config_lib.base_config()
  config.model.update(dict(siglip, embed_dim=32))
  with pytest.raises(ValueError, match="model.vision_proj"):
    config_lib.validate(config)  # an unprojected image embedding has the tower's width
  # Fields left out of config.json take HF's defaults.
  minimal = ihc.config_from_hf({"model_type": "siglip", "vision_config": {"patch_size": 14}})
  assert (minimal.vision_width, minimal.patch_size, minimal.context_length,
          minimal.vocab_size) == (768, 14, 64, 32000)


def one_line(info, *words):
  message = str(info.value)
  assert "\n" not in message, message
  for word in words:
    assert word in message, message


def rewritten(tmp_path, hf_dir, change_weights=None, change_config=None):
  """A copy of an HF folder with its state dict and/or config changed."""
  config, sd = import_hf_blip.load_checkpoint(hf_dir)
  if change_weights:
    change_weights(sd)
  if change_config:
    change_config(config)
  out = tmp_path / f"changed{len(os.listdir(tmp_path))}"
  out.mkdir()
  save_file(sd, str(out / "model.safetensors"))
  (out / "config.json").write_text(json.dumps(config))
  return str(out)


def test_errors_name_the_key_or_field(hf, tmp_path):
  c, s = hf["clip"], hf["siglip"]
  key = "text_model.encoder.layers.1.mlp.fc1.weight"
  bad = rewritten(tmp_path, c["dir"], lambda sd: sd.update({key: sd[key].T.copy()}))
  with pytest.raises(ValueError) as info:
    ihc.params_from_hf(bad, c["fields"])
  one_line(info, repr(key), "expected shape (80, 32), found (32, 80)")
  bad = rewritten(tmp_path, s["dir"],
                  lambda sd: sd.update({"vision_model.head.extra": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError) as info:
    ihc.params_from_hf(bad, s["fields"])
  one_line(info, "unused key 'vision_model.head.extra'")
  bad = rewritten(tmp_path, s["dir"], lambda sd: sd.pop("text_model.head.bias"))
  with pytest.raises(ValueError) as info:
    ihc.params_from_hf(bad, s["fields"])
  one_line(info, "missing key 'text_model.head.bias'")
  for h, change, field in ((c, dict(text_heads=4), "model.text_heads"),
                           (c, dict(text_pool="last"), "model.text_pool"),
                           (s, dict(layer_norm_eps=1e-5), "model.layer_norm_eps"),
                           (s, dict(name="clip"), "model.name"),
                           (s, dict(context_length=CONTEXT + 1), "model.context_length")):
    with pytest.raises(ValueError) as info:
      ihc.params_from_hf(h["dir"], dict(h["fields"], **change))
    one_line(info, field)
  config = json.loads(open(os.path.join(s["dir"], "config.json")).read())
  for change, field in (
      (lambda d: d.update(model_type="siglip2"), "model_type"),
      (lambda d: d["text_config"].update(hidden_act="quick_gelu"), "hidden_act"),
      (lambda d: d["vision_config"].update(layer_norm_eps=1e-5), "layer_norm_eps"),
      (lambda d: d["vision_config"].update(vision_use_head=False), "vision_use_head"),
      (lambda d: d["text_config"].update(projection_size=32), "projection_size"),
      (lambda d: d["vision_config"].update(image_size=[32, 16]), "image_size")):
    changed = json.loads(json.dumps(config))
    change(changed)
    with pytest.raises(ValueError) as info:
      ihc.config_from_hf(changed)
    one_line(info, field)


def test_sharded_checkpoint(hf, tmp_path):
  c = hf["clip"]
  c["model"].save_pretrained(str(tmp_path), safe_serialization=True, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert not os.path.exists(tmp_path / "model.safetensors")
  sharded = flax.traverse_util.flatten_dict(ihc.params_from_hf(str(tmp_path), c["fields"]))
  single = flax.traverse_util.flatten_dict(ihc.params_from_hf(c["dir"], c["fields"]))
  assert set(sharded) == set(single)
  for path, value in single.items():
    np.testing.assert_array_equal(sharded[path], value)


def test_shorter_context_keeps_the_first_positions(hf):
  c = hf["clip"]
  params = ihc.params_from_hf(c["dir"], dict(c["fields"], context_length=8))
  table = c["model"].text_model.embeddings.position_embedding.weight.detach().numpy()
  np.testing.assert_array_equal(params["text_tower"]["pos_embedding"], table[:8])


def test_cli_workdir_reads_with_init_from(hf, tmp_path, capsys):
  s = hf["siglip"]
  out = str(tmp_path / "work")
  ihc.main([f"--hf={s['dir']}", f"--out={out}", "--scan"])
  flags = capsys.readouterr().out.split()
  assert "--config.model.name=siglip" in flags and "--config.model.scan=True" in flags
  assert "--config.model.vision_proj=False" in flags
  assert flags[-1] == f"--config.model.init_from={out}"
  with open(os.path.join(out, "import_config.json")) as f:
    summary = json.load(f)
  assert summary["overrides"] == flags
  assert summary["config.model"] == dict(s["fields"].to_dict(), scan=True)

  family = family_for(s["fields"], True)
  abstract = nn.meta.unbox(jax.eval_shape(family.init, jax.random.PRNGKey(0),
                                          family.example_batch(1)))
  loaded = init_from.load(out, "", abstract)
  want = flax.traverse_util.flatten_dict(ihc.params_from_hf(s["dir"], s["fields"], scan=True))
  assert set(loaded) == set(want)
  for path, value in want.items():
    np.testing.assert_array_equal(loaded[path], value)

  for argv, words in (([f"--hf={s['dir']}", f"--out={out}"], "exists and is not empty"),
                      ([f"--hf={tmp_path / 'none'}", f"--out={tmp_path / 'new'}"],
                       "does not exist")):
    with pytest.raises(SystemExit) as info:
      ihc.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
