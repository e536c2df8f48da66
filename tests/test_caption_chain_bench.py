"""bench/caption_chain.py's pure helpers: the stage commands, reading back a finished run's
metrics and init_from line, the random-caption floor."""
import importlib.util
import os

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "caption_chain", os.path.join(REPO, "bench", "caption_chain.py"))
chain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chain)


def test_stages_name_the_runs_they_read():
  plan = {name: (config, o) for name, config, o in chain.stages("/w")}
  assert list(plan) == ["clip_tiny", "lm_tiny", "blip2_s1", "blip2_s2", "prefix", "coca_tiny"]
  assert chain.init_from_runs(plan["blip2_s2"][1]) == ["/w/blip2_s1", "/w/lm_tiny"]
  assert chain.init_from_runs(plan["prefix"][1]) == ["/w/clip_tiny", "/w/lm_tiny"]
  assert chain.init_from_runs(plan["clip_tiny"][1]) == []
  assert all("--config.data.tokenizer=/w/clip_tiny/tokenizer.model" in o
             for name, (_, o) in plan.items() if name != "clip_tiny")
  cmd = ["py", "main.py", "--config=c.py", *plan["blip2_s2"][1]]
  assert chain.shell(cmd).startswith("python main.py --config=c.py ")
  assert "'--config.model.init_from=/w/blip2_s1;/w/lm_tiny'" in chain.shell(cmd)


def test_config_steps_reads_the_configs_own():
  assert chain.config_steps("configs/blip2_stage2.py:variant=tiny") == 600
  assert chain.config_steps("configs/lm_tiny.py") == 600


def test_final_metrics_merges_the_last_steps_lines():
  lines = ['{"step": 50, "loss": 3.0}', '{"step": 600, "loss": 1.0}',
           '{"step": 600, "caption/shapes/cider": 2.5}', '{"step": 6']
  assert chain.final_metrics(lines, 600) == {"step": 600, "loss": 1.0,
                                             "caption/shapes/cider": 2.5}


def test_init_from_line():
  log = ("I1202 10:23:58.893326 1405 loop.py:238] init_from /w/s1;/w/lm: image_tower: 17 "
         "arrays (225.4K values), lm: 1 array (421 values)\nI1202 other line\n")
  assert chain.init_from_line(log) == ("/w/s1;/w/lm: image_tower: 17 arrays (225.4K values), "
                                       "lm: 1 array (421 values)")
  assert chain.init_from_line("  init_from: /w/s1\n") is None


def test_random_floor_bounds():
  refs = [["a red circle"], ["a small blue square"]]
  same = chain.random_floor(refs, ["a red circle"], draws=2)
  assert same["bleu4"] < 1.0 and same["cider"] > 0
  exact = chain.random_floor([["a small red circle"]] * 3, ["a small red circle"], draws=1)
  assert abs(exact["bleu4"] - 1.0) < 1e-6
  none = chain.random_floor(refs, ["zz yy xx ww"], draws=3)
  assert none["cider"] == 0 and none["bleu4"] < 1e-6


def test_attribute_accuracy_of_the_first_object():
  refs = [["a small red circle above a large blue square"], ["a large green cross"]]
  acc = chain.attribute_accuracy(["a small red square", "a large blue cross left of x"], refs)
  assert acc == {"size": 1.0, "color": 0.5, "shape": 0.5, "all": 0.0}
  assert chain.attribute_accuracy(["", "a large"], refs)["size"] == 0.0
