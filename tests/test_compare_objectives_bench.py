"""bench/compare_objectives.py: which families join (the contract's PRETRAINS_ON_PAIRS), the
matched-compute step selection against a hand-worked budget, the throughput reading of a
log, the tables' shapes, and one end-to-end run of the script on 2 steps of one family."""
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "compare_objectives", os.path.join(REPO, "bench", "compare_objectives.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_families_that_pretrain_on_pairs_alone():
  from vlp_jax import families
  joined = bench.pretraining_families()
  assert {"clip", "siglip", "coca", "catlip", "albef", "blip", "mplug"} <= set(joined)
  # Frozen parts from other runs, text only, or a wrapper of another family's run.
  for name in ("blip2", "blip2_lm", "prefix_lm", "keyword_lm", "lm", "vqa"):
    assert name not in joined and not families.FAMILIES[name].PRETRAINS_ON_PAIRS
  assert bench.answers_questions("blip") and not bench.answers_questions("clip")


def test_tiny_configs_build_their_family():
  configs = bench.tiny_configs()
  assert configs["clip"] == "configs/clip_tiny.py"  # *_tiny.py before clip_b16's variants
  assert configs["coca"] == "configs/coca_base.py:variant=tiny"
  assert all(f in configs for f in bench.pretraining_families())
  assert bench.with_arg("configs/clip_tiny.py", "jsonl=/d") == "configs/clip_tiny.py:jsonl=/d"
  assert bench.with_arg("c.py:variant=tiny", "jsonl=/d") == "c.py:variant=tiny,jsonl=/d"


def test_matched_compute_by_hand():
  # Batch 4, 100 steps, evaluations every 25: catlip is the cheapest, so the budget is its
  # 30 x 4 x 100 = 12,000 FLOPs. clip (60/example) reaches it at 12,000 / 240 = 50 steps,
  # a multiple of 25; coca (90) at 12,000 / 360 = 33.3 -> 33 steps, 2 intervals of at most
  # 25 -> checkpoints every 16, read at 32 (11,520 FLOPs, 4% under the budget).
  # blip (300) at 12,000 / 1,200 = 10 steps: checkpoints every 10, but 10 evaluations would
  # be more than 2 x 4, so it evaluates every 25 and its step 10 is read from a checkpoint.
  plan = bench.plan_runs({"catlip": 30, "clip": 60, "coca": 90, "blip": 300}, batch=4,
                         steps=100, points=4)
  assert {n: p["budget"] for n, p in plan.items()} == dict.fromkeys(plan, 12_000)
  assert plan["catlip"] == {"matched_step": 100, "read_step": 100, "checkpoint_every": 25,
                            "eval_every": 25, "keep": 5, "flops_at_read": 12_000,
                            "budget": 12_000}
  assert plan["blip"]["read_step"] == plan["blip"]["checkpoint_every"] == 10
  assert plan["blip"]["eval_every"] == 25 and plan["blip"]["keep"] == 11
  assert plan["coca"]["eval_every"] == 16  # 6 evaluations: on its checkpoint grid
  assert plan["clip"]["matched_step"] == plan["clip"]["read_step"] == 50
  assert plan["clip"]["checkpoint_every"] == 25
  assert plan["coca"]["matched_step"] == 33
  assert (plan["coca"]["checkpoint_every"], plan["coca"]["read_step"]) == (16, 32)
  assert plan["coca"]["flops_at_read"] == 11_520 and plan["coca"]["keep"] == 7
  assert bench.grid_step(7, 25) == (7, 7)  # under one interval: a checkpoint on it
  assert bench.grid_step(0, 25) == (25, 0)
  assert bench.matched_step(90, 4, 12_000) == 33


def test_samples_per_second_skips_busy_intervals():
  line = "I1202 16:{:02d}:{:06.3f} 1 logging_writer.py:48] [{}] grad_norm=1, loss=2.0"
  log = "\n".join([line.format(0, 0.0, 10), line.format(0, 10.0, 20),  # 10 steps in 10 s
                   line.format(1, 10.0, 30),  # an evaluation at 20: 60 s, skipped
                   line.format(1, 15.0, 40), "I1202 16:01:16.000 1 x.py:1] [40] uptime=3",
                   "torn [50] loss="])
  assert bench.samples_per_second(log, 8, busy_steps={20}) == pytest.approx(12.0)  # 8, 16
  assert bench.samples_per_second(log, 8, busy_steps={10, 20, 30}) is None


def test_tables_mean_and_half_range():
  columns = bench.metric_columns("shapes")
  seed = lambda v: {"seed": 0, "fixed": {"zeroshot/shapes_shape/top1": v},
                    "matched": {"zeroshot/shapes_shape/top1": v / 2}, "samples_per_s": 100.0,
                    "curve": {"50": {"zeroshot/shapes_shape/top1": v}}, "wall_s": 1}
  runs = {"clip": [seed(0.5), seed(0.7)], "catlip": [seed(0.4)]}
  describes = {"clip": {"params_trainable": 1_500_000, "flops_per_example": 60e6},
               "catlip": {"params_trainable": 500_000, "flops_per_example": 30e6}}
  plan = bench.plan_runs({n: d["flops_per_example"] for n, d in describes.items()}, 4, 100, 4)
  summary = bench.summarise(runs, describes, plan, 4, 100, columns)
  fixed = bench.table(summary, columns, "fixed").splitlines()
  assert fixed[0] == ("| family | params | GFLOPs/ex | samples/s | step | train GFLOPs | "
                      "zero-shot shape |")
  assert fixed[2] == "| clip | 1.50M | 0.060 | 100 ± 0 | 100 | 24 | 0.600 ± 0.100 |"
  assert fixed[3].endswith("| 0.400 |")  # one seed: no spread
  matched = bench.table(summary, columns, "matched").splitlines()
  assert matched[2].startswith("| clip | 1.50M | 0.060 | 100 ± 0 | 50 | 12 | 0.300 ± 0.050")
  x, mean, half = summary["clip"]["curve"]["zeroshot/shapes_shape/top1"][0]
  assert (x, mean, half) == pytest.approx((50 * 60e6 * 4, 0.6, 0.1))


def test_script_end_to_end(tmp_path):
  """2 steps of clip, one seed: the tables, the JSON line and file, the figure."""
  # Its own session: a timeout ends the stages it started too, not only the script.
  proc = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "bench", "compare_objectives.py"),
       f"--workdir={tmp_path}", "--families=clip", "--steps=2", "--seeds=0", "--points=1"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True)
  try:
    stdout, stderr = proc.communicate(timeout=900)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    raise
  assert proc.returncode == 0, stderr[-2000:]
  last = json.loads(stdout.strip().splitlines()[-1])
  assert last["steps"] == 2 and last["seeds"] == [0] and list(last["families"]) == ["clip"]
  clip = last["families"]["clip"]
  assert clip["matched_step"] == 2 and clip["flops_per_example"] > 0
  assert 0 <= clip["fixed"]["zeroshot/shapes_shape/top1"] <= 1
  assert "probe/shapes_shape/top1" in clip["fixed"] and "retrieval/shapes/i2t_r10" in clip["fixed"]
  md = (tmp_path / "compare_objectives.md").read_text()
  assert md.count("| clip |") == 2 and "R@10 i2t" in md and "CIDEr-D" not in md
  saved = json.loads((tmp_path / "compare_objectives.json").read_text())
  assert saved["plan"]["clip"]["read_step"] == 2
  assert (tmp_path / "compare_objectives.png").stat().st_size > 0
