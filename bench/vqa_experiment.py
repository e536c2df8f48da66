"""VQA on the built-in shapes questions: mPLUG tiny and BLIP tiny fine-tuned from their
pretraining runs, each against its question-only baseline, accuracy per question type.

  python bench/vqa_experiment.py --workdir=DIR [--families=mplug,blip] [--steps=N]

Each stage is one `python main.py ...` command in the repository root (W = --workdir; the
README's commands with W for `workdirs`), for each family F:
  F_tiny   python main.py --config=configs/F_base.py:variant=tiny --workdir=W/F_tiny
  F_vqa    python main.py --config=configs/vqa.py:base=F_base,variant=tiny
               --config.model.init_from=W/F_tiny --workdir=W/F_vqa
  F_blind  the same with `,blind` (every image replaced by zeros, in training and answering)
Fine-tuning reads builtin:shapes_vqa:train (60,000 questions) and is evaluated on
builtin:shapes_vqa:test (3,000 questions about held-out scenes), answers decoded greedily
and scored with VQAv2's accuracy (vlp_jax/evaluate/vqa_metrics.py). --steps=N sets the
fine-tuning steps (default: configs/vqa.py's); pretraining runs the configs' own 600.

Resumable as bench/caption_chain.py (whose stage runner this uses): a stage whose workdir
holds its final checkpoint is not rerun. The prior: each type's commonest answer's share
of the test questions (what answering by the prior alone scores); the blind baseline should
stay near it on colour questions, whose wording says nothing of the answer.

Prints a Markdown table and writes W/vqa_experiment.json (also the last line).

Result, 2026-12-02, `--families=mplug` and `--families=blip` run side by side into one W,
2 cores shared with other jobs: pretraining mPLUG tiny 1,800 s (load 4-12), BLIP tiny
about 780 s; fine-tuning stages 190-400 s each. One seed; questions of cache version 1.1.0
(since 1.2.0 the same in every process; the priors moved by under 0.002):

  | run | steps | color | shape | size | count | position | exists | all |
  |---|---:|---:|---:|---:|---:|---:|---:|---:|
  | mplug_vqa | 300 | 0.787 | 0.422 | 0.842 | 0.295 | 0.532 | 0.537 | 0.585 |
  | mplug_blind | 300 | 0.166 | 0.279 | 0.498 | 0.245 | 0.520 | 0.531 | 0.383 |
  | blip_vqa | 300 | 0.764 | 0.395 | 0.810 | 0.504 | 0.520 | 0.521 | 0.594 |
  | blip_blind | 300 | 0.183 | 0.250 | 0.500 | 0.387 | 0.474 | 0.505 | 0.390 |
  | answer prior (commonest answer) | - | 0.169 | 0.252 | 0.501 | 0.251 | 0.500 | 0.500 | - |

  mplug_tiny at 600: itc_loss 3.365, itm_accuracy 0.938, mlm_accuracy 0.816,
  prefix_lm_accuracy 0.836; blip_tiny: itc_loss 3.384, itm_accuracy 0.945, lm_accuracy 0.811.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import caption_chain  # pylint: disable=wrong-import-position
import json_files  # pylint: disable=wrong-import-position

TYPES = ("color", "shape", "size", "count", "position", "exists")
EVAL_NAME = "shapes_vqa"  # builtin:shapes_vqa:test: the metric keys' set name
TEST_QUESTIONS = 3_000  # vlp_jax/data/vqa_source.py's test size


def stages(w, family):
  """[(name, config, overrides)] of one family: pretraining, fine-tuning, the baseline."""
  init = [f"--config.model.init_from={w}/{family}_tiny"]
  return [(f"{family}_tiny", f"configs/{family}_base.py:variant=tiny", []),
          (f"{family}_vqa", f"configs/vqa.py:base={family}_base,variant=tiny", init),
          (f"{family}_blind", f"configs/vqa.py:base={family}_base,variant=tiny,blind", init)]


def prior():
  """question type -> the commonest answer's share of the test questions."""
  from vlp_jax.data import shapes_vqa  # pylint: disable=g-import-not-at-top
  shares = shapes_vqa.answer_prior(
      {"question_type": ex["question_type"], "answers": ex["answers"]}
      for ex in shapes_vqa.examples("test", TEST_QUESTIONS))
  return {t: max(tally.values()) for t, tally in shares.items()}


def accuracies(final):
  """(overall, {type: accuracy}) of a fine-tuning stage's final metrics."""
  key = f"vqa/{EVAL_NAME}/accuracy"
  return final.get(key), {t: final.get(f"{key}/{t}") for t in TYPES}


def _fmt(value, digits=3):
  return "-" if value is None else f"{value:.{digits}f}"


def table(results, chance):
  """The Markdown tables: VQA accuracy per type, and the pretraining objectives."""
  head = "| run | steps | " + " | ".join(TYPES) + " | all |"
  lines = [head, "|---|---:|" + "---:|" * (len(TYPES) + 1)]
  for name, stage in results["stages"].items():
    if name.endswith("_tiny"):
      continue
    overall, per_type = accuracies(stage["final"])
    lines.append(f"| {name} | {stage['steps']} | " +
                 " | ".join(_fmt(per_type[t]) for t in TYPES) + f" | {_fmt(overall)} |")
  lines.append("| answer prior (commonest answer) | - | " +
               " | ".join(_fmt(chance.get(t)) for t in TYPES) + " | - |")
  lines += ["", "| pretraining | steps | wall s | final metrics |", "|---|---:|---:|---|"]
  keys = ("itc_loss", "itm_accuracy", "mlm_accuracy", "prefix_lm_accuracy", "lm_accuracy")
  for name, stage in results["stages"].items():
    if name.endswith("_tiny"):
      shown = ", ".join(f"{k} {_fmt(stage['final'].get(k))}" for k in keys
                        if k in stage["final"])
      lines.append(f"| {name} | {stage['steps']} | {_fmt(stage['wall_s'], 0)} | {shown} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="Folder of the runs and logs.")
  parser.add_argument("--families", default="mplug,blip",
                      help="Comma-separated pretraining families with a config "
                           "configs/F_base.py whose family answers questions.")
  parser.add_argument("--steps", type=int, default=None,
                      help="Fine-tuning steps (default: configs/vqa.py's).")
  args = parser.parse_args()
  w = os.path.abspath(args.workdir)
  os.makedirs(w, exist_ok=True)
  py = sys.executable
  started = time.perf_counter()
  plan = [s for f in args.families.split(",") if f for s in stages(w, f.strip())]
  # All read now: a config edited while this runs would meet stale imports.
  steps = {name: (args.steps if args.steps and not name.endswith("_tiny") else
                  caption_chain.config_steps(config)) for name, config, _ in plan}
  results = {"args": vars(args), "stages": {}}
  for name, config, overrides in plan:
    flag = [f"--config.train.steps={args.steps}"] if args.steps and not name.endswith("_tiny") \
        else []
    results["stages"][name] = caption_chain.train(py, w, name, config, overrides,
                                                  steps[name], flag)
  results["prior"] = prior()
  results["wall_s"] = round(time.perf_counter() - started, 1)
  print(f"\nbuiltin:shapes_vqa:train -> builtin:shapes_vqa:test, workdir {w}\n")
  print(table(results, results["prior"]))
  json_files.write(os.path.join(w, "vqa_experiment.json"), results)
  print(json.dumps(json_files.strict({n: accuracies(s["final"]) for n, s in
                                      results["stages"].items() if not n.endswith("_tiny")})))


if __name__ == "__main__":
  main()
