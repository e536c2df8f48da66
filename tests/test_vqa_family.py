"""model.name='vqa': the batch, the loss through the wrapped family's answer_features, the
blind baseline, closed-list ranking, validation, init_from a BLIP pretraining run and the
`vqa` evaluation through the real trainer."""
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import main
from tests.helpers import tiny_config, write_scene_folder
from vlp_jax import config_lib, data, families
from vlp_jax.data import preprocess, shapes_vqa, sources, tokenizer as tokenizer_lib
from vlp_jax.evaluate import vqa as vqa_eval
from vlp_jax.evaluate import vqa_metrics
from vlp_jax.families import vqa
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.train import fingerprint, init_from, loop

B, LENGTH, ANSWER = 8, 24, 4
SMALL = {"model.image_size": 32, "model.vision_width": 32, "model.text_width": 32,
         "model.fusion_depth": 1, "model.context_length": LENGTH, "model.vocab_size": 128,
         "loss.queue_size": B, "train.batch_size": B, "eval.batch_size": B,
         "vqa.answer_length": ANSWER}


def _config(**overrides):
  return tiny_config(**{**SMALL, "model.name": "vqa", "vqa.family": "blip", **overrides})


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  """A tokenizer of shapes questions and answers (ids 3-6 are BLIP's special symbols)."""
  texts = [t for ex in shapes_vqa.examples("train", 300) for t in (ex["question"],
                                                                   ex["answers"][0])]
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  tokenizer_lib.train_tokenizer(texts, 128, path)
  return data.Tokenizer(path, LENGTH)


def _family(tok, **overrides):
  return families.get_family(_config(**overrides), tok.eos_id)


@pytest.fixture(scope="module")
def params(tok):
  family = _family(tok)
  zeros = {k: jnp.zeros(x.shape, x.dtype) for k, x in family.example_batch(B).items()}
  return nn.meta.unbox(jax.jit(family.init)(jax.random.PRNGKey(0), zeros))


def _raw(seed=0):
  """A host batch as a VQA source gives it: questions as captions, answers per row."""
  exs = list(shapes_vqa.examples("test", B))
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(B, 32, 32, 3)).astype(np.float32),
          "caption": [ex["question"] for ex in exs], "key": [str(i) for i in range(B)],
          "answers": [ex["answers"] for ex in exs],
          "question_type": [ex["question_type"] for ex in exs]}


def test_host_batch_picks_the_most_frequent_answer_and_tokenises(tok, caplog):
  family = _family(tok)
  raw = _raw()
  raw["answers"][:3] = [["no", "yes", "yes"], ["red", "blue"], [b"two", b"2", b"2", b"two"]]
  raw["answers"][4] = ["k\u00fchl"]  # a letter no question or answer of the tokenizer has
  raw["caption"][3] = "is the " + "large red circle " * 8 + "left of the square?"  # too long
  batch = family.host_batch(raw, tok)
  assert {k: v.shape for k, v in batch.items()} == {
      "image": (B, 32, 32, 3), "question": (B, LENGTH - ANSWER), "answer": (B, ANSWER)}
  assert tok.decode(batch["answer"][:3]) == ["yes", "red", "two"]  # ties: the first given
  assert tok.decode(batch["answer"][3:4]) == [raw["answers"][3][0]]
  assert tok.decode(batch["answer"][5:]) == [a[0] for a in raw["answers"][5:]]
  assert "['k\u00fchl'] contain pieces the tokenizer does not know" in caplog.text
  caplog.clear()
  family.host_batch(raw, tok)
  assert "does not know" not in caplog.text  # each answer once
  full = tok.encode(raw["caption"])
  short = [i for i in range(B) if full[i, LENGTH - ANSWER - 1] == 0]
  np.testing.assert_array_equal(batch["question"][short], full[short, :LENGTH - ANSWER])
  np.testing.assert_array_equal(batch["question"][3, :-1], full[3, :LENGTH - ANSWER - 1])
  assert batch["question"][3, -1] == tok.eos_id  # cut like the tokenizer cuts: EOS last


def test_blip_tokenizer_checks_are_the_wrapped_familys(tok, tmp_path):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  spm.SentencePieceTrainer.train(  # no [CLS] ... [DEC]: BLIP refuses it
      sentence_iterator=iter(["what color is the circle?"] * 4), vocab_size=30,
      model_prefix=str(tmp_path / "plain"), model_type="bpe", hard_vocab_limit=False,
      pad_id=0, unk_id=1, eos_id=2, bos_id=-1, minloglevel=2)
  with pytest.raises(ValueError, match="no \\[CLS\\] symbol"):
    _family(tok).host_batch(_raw(), data.Tokenizer(str(tmp_path / "plain.model"), LENGTH))


def test_loss_is_the_wrapped_familys_answer_sums(tok, params):
  family = _family(tok)
  batch = family.host_batch(_raw(), tok)
  feats = jax.jit(family.features)(params, batch, jax.random.PRNGKey(1))
  direct = jax.jit(family.wrapped.answer_features)(params, batch["image"], batch["question"],
                                                   batch["answer"])
  tokens = np.sum(direct["lm_tokens"])
  assert tokens == np.sum(batch["answer"] != 0)  # the answer's pieces and EOS, nothing else
  loss, metrics = family.loss(params, feats, None)
  np.testing.assert_allclose(loss, np.sum(direct["lm_nll_sum"]) / tokens, rtol=1e-6)
  np.testing.assert_allclose(metrics["answer_token_accuracy"],
                             np.sum(direct["lm_correct"]) / tokens, rtol=1e-6)
  assert metrics["answer_loss"] == loss


def _outputs(family, params, batch):
  """Greedy answers, the nll of three answers and the loss, for one family (jitted once)."""
  def outputs(params, images):
    nll = family.candidate_nll(params, images, batch["question"], batch["answer"][:3])
    feats = family.features(params, dict(batch, image=images), jax.random.PRNGKey(1))
    return (family.answer(params, images, batch["question"], ANSWER), nll,
            family.loss(params, feats, None)[0])
  return jax.jit(outputs)


def test_blind_answers_do_not_see_the_image(tok, params):
  batch = _family(tok).host_batch(_raw(), tok)
  other = jnp.asarray(_raw(seed=1)["image"])
  for blind in (True, False):
    run = _outputs(_family(tok, **{"vqa.blind": blind}), params, batch)
    (answers_a, nll_a, loss_a), (answers_b, nll_b, loss_b) = (
        jax.device_get(run(params, images)) for images in (batch["image"], other))
    if blind:
      np.testing.assert_array_equal(answers_a, answers_b)
      np.testing.assert_array_equal(nll_a, nll_b)
      assert loss_a == loss_b
    else:
      assert np.abs(nll_a - nll_b).max() > 1e-4
      assert abs(loss_a - loss_b) > 1e-5


def test_closed_list_ranking_picks_the_lowest_summed_nll(tok, params):
  family = _family(tok)
  batch = family.host_batch(_raw(), tok)
  answers = ["yes", "no", "red", "circle", "2", "small"]
  family.set_candidates(answers, tok)
  answer = jax.jit(lambda p, i, q: family.answer(p, i, q, ANSWER))
  chosen = tok.decode(answer(params, batch["image"], batch["question"]))
  features = jax.jit(family.wrapped.answer_features)
  direct = []  # each candidate's summed nll, teacher forced through answer_features
  for c in range(len(answers)):
    rows = np.repeat(family.candidate_tokens[c:c + 1], B, axis=0)
    direct.append(features(params, batch["image"], batch["question"], rows)["lm_nll_sum"])
  direct = np.stack(direct, axis=1)
  ranked = jax.jit(family.candidate_nll)(params, batch["image"], batch["question"],
                                         family.candidate_tokens)
  np.testing.assert_allclose(ranked, direct, rtol=1e-5)
  assert chosen == [answers[i] for i in np.argmin(direct, axis=1)]
  assert family.candidate_tokens.shape == (len(answers), ANSWER)


@pytest.mark.parametrize("overrides, field", [
    ({"vqa.answer_length": 1}, "vqa.answer_length"),
    ({"vqa.answer_length": LENGTH - 1}, "vqa.answer_length"),
    ({"vqa.family": "nosuch"}, "vqa.family"),
    ({"vqa.family": "clip"}, "vqa.family"),
])
def test_validation_names_the_field(overrides, field):
  with pytest.raises(ValueError, match=f"'{field}'"):
    _config(**overrides)


def test_a_changed_vqa_field_is_a_different_run_but_candidates_are_evaluation():
  base = fingerprint.fingerprint(_config())
  for field, value in (("vqa.blind", True), ("vqa.answer_length", 5), ("vqa.family", "coca")):
    assert fingerprint.fingerprint(_config(**{field: value})) != base, field
  assert fingerprint.fingerprint(_config(**{"vqa.candidates": "train"})) == base


def test_a_family_that_cannot_answer_is_refused_naming_the_field(tok):
  c = config_lib.base_config()
  c.update_from_flattened_dict({"model.name": "vqa", "vqa.family": "clip"})
  with pytest.raises(ValueError, match="'vqa.family': 'clip' cannot answer") as error:
    families.get_family(c, tok.eos_id)
  listed = str(error.value)
  assert "'blip'" in listed and "'coca'" in listed and "'albef'" not in listed
  # Decided by the methods, not the name: a CLIP with both methods could answer.
  answering = type("Answering", (families.ClipFamily,),
                   {"answer_features": lambda *a: None, "answer": lambda *a: None})
  assert vqa.can_answer(answering) and not vqa.can_answer(families.ClipFamily)


def test_answerer_feeds_each_question_with_its_own_image_across_unusable_positions():
  """Positions 1, 4 and 9 of 13 are unusable (12 rows over two eval batches of 8): every
  usable record's answer is computed from its image and its question."""
  valid = np.ones(13, bool)
  valid[[1, 4, 9]] = False
  n = int(valid.sum())
  images = np.zeros((n, 2, 2, 3), np.uint8)
  images[:, 0, 0, 0] = 10 * np.arange(1, n + 1)  # record i's image says 10 (i + 1)
  questions = np.zeros((n, 3), np.int32)
  questions[:, 0] = np.arange(100, 100 + n)  # and its question 100 + i
  ev = data.EvalSet("set", images, questions, [""] * n, {}, {}, {},
                    positions=np.flatnonzero(valid), valid=valid, answers=[["x"]] * n)
  # What the answer reads of each row: its question's first token and its image's value.
  fake = families.ClipFamily(tiny_config())
  fake.answer = lambda params, images, questions, max_len: jnp.stack(
      [questions[:, 0], jnp.round(images[:, 0, 0, 0] * 1000).astype(jnp.int32)], 1)
  mesh = mesh_lib.make_mesh(tiny_config().mesh)
  got = vqa_eval.Answerer(fake, mesh, 8, 2).answers(None, ev)
  want = np.round(np.asarray(preprocess.normalize_on_device(images))[:, 0, 0, 0] * 1000)
  np.testing.assert_array_equal(got[:, 0], questions[:, 0])
  np.testing.assert_array_equal(got[:, 1], want.astype(np.int32))


# ---- through the trainer --------------------------------------------------------------------

def _run_config(**overrides):
  return _config(**{"data.shuffle_buffer": 64, "train.log_every": 1, "train.steps": 2,
                    "train.checkpoint_every": 2, "optim.warmup_steps": 1,
                    "data.holdout_percent": 30, **overrides})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A BLIP run of 2 steps on scene captions: its tokenizer knows no question words."""
  folder = write_scene_folder(tmp_path_factory.mktemp("scenes"), count=32)
  workdir = str(tmp_path_factory.mktemp("blip"))
  c = _run_config(**{"model.name": "blip", "data.train": f"jsonl:{folder}", "data.eval": ""})
  main.run(c, "train", workdir)
  return workdir, c


@pytest.fixture(scope="module")
def vqa_folder(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("vqa"))
  shapes_vqa.write_jsonl_folder(folder, "test", 60)
  return folder


def test_init_from_a_blip_run_restores_every_parameter(pretrained, vqa_folder, tmp_path):
  pretrained, blip_config = pretrained
  c = _run_config(**{"model.init_from": pretrained, "data.train": f"vqa:{vqa_folder}:train",
                     "vqa.candidates": "train"})
  s = loop.setup(c, str(tmp_path / "vqa"))
  # vqa.candidates=train: every distinct answer of data.train, kept in WORKDIR/answers.txt.
  train = sources.get_source(f"vqa:{vqa_folder}:train", holdout_percent=30)
  kept = vqa.read_answers(str(tmp_path / "vqa" / "answers.txt"))
  assert s.family.candidates == kept and len(kept) == len(set(kept))
  assert set(kept) == {a for ex in train.examples for a in ex["answers"]}
  with open(os.path.join(pretrained, "tokenizer.model"), "rb") as f, \
      open(tmp_path / "vqa" / "tokenizer.model", "rb") as g:
    assert f.read() == g.read()  # the run's tokenizer, not one trained on the questions
  loaded = init_from.load(c.model.init_from, "", s.abstract_state.params)
  wanted = flax.traverse_util.flatten_dict(dict(s.abstract_state.params))
  assert set(loaded) == set(wanted)
  s.checkpointer.close()
  blip, restored = loop.restore_for_reading(blip_config, pretrained)
  blip.checkpointer.close()
  theirs = flax.traverse_util.flatten_dict(dict(restored.params))
  for path, value in loaded.items():
    np.testing.assert_array_equal(value, np.asarray(theirs[path]), err_msg=str(path))


def test_a_vqa_run_trains_and_reports_the_metric_of_its_answers(pretrained, vqa_folder,
                                                                  tmp_path):
  pretrained, _ = pretrained
  c = _run_config(**{"model.init_from": pretrained, "data.train": f"vqa:{vqa_folder}:train",
                     "data.eval": f"vqa:{vqa_folder}:test"})
  workdir = str(tmp_path / "vqa")
  result = main.run(c, "train", workdir)
  name = os.path.basename(vqa_folder)
  assert {f"vqa/{name}/accuracy", f"vqa/{name}/count", "answer_loss"} <= set(result)
  # The metric is vqa_metrics of the checkpoint's decoded answers, on every question.
  s, state = loop.restore_for_reading(c, workdir)
  (ev,), _ = loop.load_eval_sets(s)
  answerer = loop.make_encoder(s)
  predicted = s.tokenizer.decode(answerer.answers(state.params, ev))
  s.checkpointer.close()
  want = vqa_metrics.evaluate(dict(enumerate(predicted)), dict(enumerate(ev.answers)),
                              dict(enumerate(ev.question_types)))
  assert want["count"] == len(ev.answers) == result[f"vqa/{name}/count"] > 0
  for key, value in want.items():
    assert result[f"vqa/{name}/{key}"] == value, key
  assert any(k.startswith(f"vqa/{name}/accuracy/") for k in result)
  evaluated = main.run(c, "eval", workdir)
  assert {k: v for k, v in evaluated.items() if k.startswith("vqa/")} == {
      k: v for k, v in result.items() if k.startswith("vqa/")}
