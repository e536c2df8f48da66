"""HF GPT-2 / OPT import (vlp_jax/models/import_hf_lm.py) against transformers itself.

Tiny random GPT2LMHeadModel (tied head) and OPTForCausalLM (own head, OPT's 2 offset rows)
are built offline, every weight redrawn (LayerNorms and biases included), saved with
save_pretrained (safetensors) and imported. Our model reads HF ids + 1 (our 0 is padding):
our logits at k + 1 must be HF's at k, at every position of the table. Skipped where the
bench extra (torch, transformers) is not installed.
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

from flax import linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import import_hf_lm as ihl  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.models import language_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from vlp_jax.train import init_from  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB, POSITIONS, WIDTH = 100, 32, 32
RTOL, ATOL = 1e-4, 1e-5


def hf_configs():
  """No eos: HF's generate never stops early."""
  gpt2 = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH,
                                 n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None)
  opt = transformers.OPTConfig(vocab_size=VOCAB, max_position_embeddings=POSITIONS,
                               hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                               ffn_dim=48, word_embed_proj_dim=WIDTH, tie_word_embeddings=False,
                               pad_token_id=1, bos_token_id=None, eos_token_id=None)
  return {"gpt2": gpt2, "opt": opt}


def randomize(model, seed):
  """Every parameter redrawn (tied ones stay tied: parameters() yields them once)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 1:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) * min(p.shape) ** -0.5)
  return model.eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  out = {}
  classes = dict(zip(("gpt2", "opt"), helpers.transformers_models("GPT2LMHeadModel",
                                                                  "OPTForCausalLM")))
  for seed, (kind, config) in enumerate(hf_configs().items()):
    torch.manual_seed(seed)
    model = randomize(classes[kind](config), seed)
    directory = str(tmp_path_factory.mktemp(kind))
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
      json.dump({f"t{i}": i for i in range(VOCAB)}, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
      f.write("#version: 0.2\nt 1\n")
    config, sd = ihl.load_checkpoint(directory)
    out[kind] = dict(model=model, dir=directory, config=config, sd=sd,
                     fields=ihl.hf_config(config))
  return out


def model_config(fields, scan=False):
  return ihl._model_config(dict(fields, scan=scan))  # pylint: disable=protected-access


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.from_numpy(ids).long()).logits.numpy()


def our_logits(params, m, ids):
  module = language_model.from_config(m)
  fn = jax.jit(lambda p, x: module.apply(
      {"params": p}, x, method=lambda mod, x: mod.logits(mod.hidden(mod.embed(x)))))
  return np.asarray(fn(params, jnp.asarray(ids + 1)))


def random_ids(seed, shape=(3, POSITIONS)):
  return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


def test_hf_config(hf):
  lm = dict(width=WIDTH, depth=2, heads=4, positions=POSITIONS)
  assert hf["gpt2"]["fields"] == dict(vocab_size=VOCAB + 1, lm=dict(
      lm, position_offset=0, mlp_ratio=4.0, activation="gelu_tanh", tied=True))
  assert hf["opt"]["fields"] == dict(vocab_size=VOCAB + 1, lm=dict(
      lm, position_offset=2, mlp_ratio=1.5, activation="relu", tied=False))
  # the config objects read as their dicts do
  assert ihl.hf_config(hf_configs()["opt"]) == hf["opt"]["fields"]


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_logits_parity(hf, kind, scan):
  """Every position of the table (OPT: after its 2 offset rows), padding logit 0."""
  h = hf[kind]
  m = model_config(h["fields"], scan)
  params = ihl.lm_params(h["sd"], m)
  emb = params["token_embedding"]
  assert emb.shape == (VOCAB + 1, WIDTH) and not emb[0].any()
  if scan:
    assert params["decoder"]["blocks"]["attn"]["qkv_kernel"].shape == (2, WIDTH, 3, 4, 8)
  ids = random_ids(1)
  ours, ref = our_logits(params, m, ids), hf_logits(h["model"], ids)
  np.testing.assert_array_equal(ours[..., 0], 0)
  np.testing.assert_allclose(ours[..., 1:], ref, rtol=RTOL, atol=ATOL * np.abs(ref).max())


@pytest.mark.parametrize("kind,scan", [("gpt2", True), ("opt", False)])
def test_greedy_decoding_matches_generate(hf, kind, scan):
  """Our KV-cached DecoderLM (decode=True: a full-length call sizes the caches, the prompt
  and then each token are appended) vs HF's greedy generate from the same prompt."""
  h = hf[kind]
  m = model_config(h["fields"], scan)
  params = ihl.lm_params(h["sd"], m)
  prompt, steps = random_ids(2, (2, 5)), 6
  dec = language_model.from_config(m, decode=True)
  total = prompt.shape[1] + steps
  _, variables = dec.apply({"params": params}, jnp.zeros((2, total), jnp.int32), 0,
                           method=dec.step, mutable=["cache"])
  cache, ids, position, out = variables["cache"], jnp.asarray(prompt + 1), 0, []
  for _ in range(steps):
    logits, variables = dec.apply({"params": params, "cache": cache}, ids, position,
                                  method=dec.step, mutable=["cache"])
    cache, position = variables["cache"], position + ids.shape[1]
    ids = (jnp.argmax(logits[:, -1, 1:], axis=-1) + 1)[:, None]  # padding never chosen
    out.append(np.asarray(ids[:, 0]) - 1)
  with torch.no_grad():
    theirs = h["model"].generate(torch.from_numpy(prompt).long(),
                                 attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                 max_new_tokens=steps, do_sample=False, num_beams=1).numpy()
  np.testing.assert_array_equal(np.stack(out, axis=1), theirs[:, prompt.shape[1]:])


def test_fewer_positions_and_ignored_keys(hf):
  h = hf["opt"]
  fields = dict(h["fields"], lm=dict(h["fields"]["lm"], positions=16))
  params = ihl.lm_params(h["sd"], fields)
  np.testing.assert_array_equal(params["pos_embedding"],
                                h["sd"]["model.decoder.embed_positions.weight"][:18])
  np.testing.assert_array_equal(params["head"][:, 1:], h["sd"]["lm_head.weight"].T)
  assert not params["head"][:, 0].any()
  # GPT-2: mask buffers and a tied head equal to the embedding are ignored; the bare
  # GPT2Model's keys (no "transformer.") import the same
  g = hf["gpt2"]
  base = ihl.lm_params(g["sd"], g["fields"])
  sd = dict(g["sd"], **{"transformer.h.0.attn.bias": np.ones((1, 1, 4, 4), np.float32),
                        "transformer.h.1.attn.masked_bias": np.float32(-1e4),
                        "lm_head.weight": g["sd"]["transformer.wte.weight"]})
  bare = {k[len("transformer."):]: v for k, v in g["sd"].items()}
  for other in (sd, bare):
    jax.tree.map(np.testing.assert_array_equal, ihl.lm_params(other, g["fields"]), base)


def one_line(info, pattern):
  message = str(info.value)
  assert "\n" not in message and pattern in message, message


def test_errors_are_one_line(hf):
  g, o = hf["gpt2"], hf["opt"]
  sd = dict(g["sd"], **{"transformer.h.0.attn.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError) as info:
    ihl.lm_params(sd, g["fields"])
  one_line(info, "unknown key 'transformer.h.0.attn.extra.weight'")
  sd = {k: v for k, v in g["sd"].items() if k != "transformer.h.1.ln_2.bias"}
  with pytest.raises(ValueError) as info:
    ihl.lm_params(sd, g["fields"])
  one_line(info, "missing key 'transformer.h.1.ln_2.bias'")
  sd = dict(g["sd"], **{"lm_head.weight": g["sd"]["transformer.wte.weight"] + 1})
  with pytest.raises(ValueError) as info:
    ihl.lm_params(sd, g["fields"])
  one_line(info, "model.lm.tied")
  for fields, field in ((dict(g["fields"], vocab_size=VOCAB), "model.vocab_size"),
                        (dict(g["fields"], lm=dict(g["fields"]["lm"], positions=POSITIONS + 1)),
                         "model.lm.positions"),
                        (dict(o["fields"], lm=dict(o["fields"]["lm"], depth=3)), "model.lm.depth")):
    with pytest.raises(ValueError) as info:
      ihl.lm_params(o["sd"] if field == "model.lm.depth" else g["sd"], fields)
    one_line(info, field)
  for config, field in ((dict(o["config"], do_layer_norm_before=False), "do_layer_norm_before"),
                        (dict(o["config"], word_embed_proj_dim=16), "word_embed_proj_dim"),
                        (dict(g["config"], layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
                        (dict(g["config"], activation_function="swish"), "activation_function"),
                        (dict(g["config"], scale_attn_by_inverse_layer_idx=True),
                         "scale_attn_by_inverse_layer_idx")):
    with pytest.raises(ValueError) as info:
      ihl.hf_config(config)
    one_line(info, field)


def test_cli_workdir_reads_with_init_from(hf, tmp_path, capsys):
  g = hf["gpt2"]
  out = str(tmp_path / "work")
  ihl.main([f"--hf={g['dir']}", f"--out={out}", "--scan"])
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith(f"--config.model.vocab_size={VOCAB + 1} --config.model.lm.width=")
  assert "--config.model.scan=True" in printed[0]
  assert printed[0].endswith(f"--config.model.init_from={out} "
                             f"--config.data.tokenizer={out}/tokenizer")
  with open(os.path.join(out, "import_config.json")) as f:
    summary = json.load(f)
  assert summary["config.model"] == dict(g["fields"], scan=True)
  assert sorted(os.listdir(os.path.join(out, "tokenizer"))) == [
      "config.json", "merges.txt", "vocab.json"]

  m = model_config(g["fields"], scan=True)
  module = language_model.from_config(m)
  abstract = {"lm": nn.meta.unbox(jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), 0)["params"]))}
  loaded = init_from.load(out, "", abstract)
  want = ihl._flatten({"lm": ihl.lm_params(g["sd"], m)})  # pylint: disable=protected-access
  assert set(loaded) == set(want)
  for path, value in want.items():
    np.testing.assert_array_equal(loaded[path], value)

  with pytest.raises(SystemExit) as info:  # nothing is overwritten
    ihl.main([f"--hf={g['dir']}", f"--out={out}"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "exists and is not empty" in err, err
