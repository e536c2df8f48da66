"""Which objective? Every family that pretrains on image-text pairs by itself, trained on the
same data with the same image tower, batch and steps over several seeds, evaluated on all its
family declares; read again at matched training FLOPs.

  python bench/compare_objectives.py --workdir=DIR [--families=clip,coca] [--steps=N]
      [--seeds=0,1] [--data=shapes|emoji] [--points=N] [--vqa_steps=N] [--results=DIR]

Families: those of vlp_jax.families.FAMILIES whose class says PRETRAINS_ON_PAIRS (the contract,
families/base.py; those that read another run's frozen parts, the text-only LM and the VQA
wrapper say False), each with the first config in configs/ whose `variant=tiny` (or, for a
`*_tiny.py` file, its default) builds that family. Every run gets the same overrides
(`common_overrides`): the image tower (32px, patch 8, width 128, depth 2, 4 heads), batch
128, the steps, the seed, the data, greedy decoding, and a linear probe of builtin:shapes
(its training split capped at PROBE_EXAMPLES images by eval.max_examples). The towers'
layouts still differ where a family defines its own (the fusion families' ViT has a patch
bias and no LayerNorm before the blocks); text towers and heads are each config's own.

Each stage is one `python main.py ...` command run through bench/caption_chain.py's stage
runner (W = --workdir): `--mode=describe` per family (trainable parameters, training FLOPs
per example), then per family and seed `--workdir=W/F_sS` training, `--mode=eval --step=N`
at the matched step when the run did not evaluate it, and for caption families
`--mode=caption --step=N` there (the trainer captions only its last step).
With --vqa_steps=N > 0, each run of a family that answers questions (its `answer` is its
own, not the contract's default) is fine-tuned N steps by configs/vqa.py
(bench/vqa_experiment.py's flow) and scored on builtin:shapes_vqa:test (fixed steps only).

Matched compute: the budget is the cheapest family's training FLOPs at the fixed steps
(describe's flops_per_example x batch x steps); a family's matched step is the largest step
within it. Each run checkpoints every `grid_step(matched step, steps // points)[0]` steps,
so that a checkpoint lands on its matched step or at most a few steps below, and keeps them
all; it evaluates there too (in the training process) when that makes at most 2 x points
evaluations, else every steps // points steps plus one `--mode=eval` of the matched
checkpoint (`plan_runs`). No extra training runs. The evaluations are the figure's points.

Samples/s: the median over a run's logging intervals (train.log_every steps) that contain no
evaluation (checkpoint saves, asynchronous, are counted in), from the log lines' times; the
machine is shared, so it is a reading of that day (cpu_s in the JSON: the CPU seconds of
the stages run by that invocation, which other jobs do not inflate). Spread over seeds:
mean +- half the range, (max - min) / 2.

Resumable: a run whose workdir holds its final checkpoint is not rerun, a finished
describe, eval or caption reading (W/NAME.*.json) is reused. Writes
W/compare_objectives.{json,md,png} and prints the tables, the JSON line last;
--results=DIR copies the three files there.
"""
import argparse
import glob
import importlib.util
import json
import math
import os
import re
import resource
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import caption_chain  # pylint: disable=wrong-import-position
import json_files  # pylint: disable=wrong-import-position

TOWER = dict(image_size=32, patch_size=8, vision_width=128, vision_depth=2, vision_heads=4)
BATCH = 128
STEPS = 150
SEEDS = "0,1"
POINTS = 3  # evaluations of the cheapest family's run (the figure's points); more for others
LOG_EVERY = 10
PROBE = "builtin:shapes:train=>builtin:shapes:test"
PROBE_EXAMPLES = 5_000
EMOJI_DIR = os.path.join(ROOT, "..", "shared", "data", "emoji_noto")
DECODE = ["--config.decode.method=greedy"]
VQA_SET = "shapes_vqa"


def data_specs(data):
  """(config arg to append, data overrides, retrieval set name) of --data."""
  if data == "shapes":
    return "", ["--config.data.train=builtin:shapes:train",
                 "--config.data.eval=builtin:shapes:test"], "shapes"
  if data == "emoji":
    folder = os.path.abspath(EMOJI_DIR)
    if not os.path.isfile(os.path.join(folder, "captions.jsonl")):
      raise ValueError(f"--data=emoji: no captions.jsonl in {folder}")
    # Pretraining and retrieval on the emoji captions; zero-shot and the probe on shapes.
    return f"jsonl={folder}", [f"--config.data.train=jsonl:{folder}:train",
                               f"--config.data.eval=jsonl:{folder}:test,builtin:shapes:test"], \
        os.path.basename(folder)
  raise ValueError(f"--data: unknown data {data!r} (shapes or emoji)")


def metric_columns(ret_set):
  """[(column, metric key)] of the table, in order; a family shows those it logs."""
  return [("zero-shot colour", "zeroshot/shapes_color/top1"),
          ("zero-shot shape", "zeroshot/shapes_shape/top1"),
          ("zero-shot size", "zeroshot/shapes_size/top1"),
          ("R@1 i2t", f"retrieval/{ret_set}/i2t_r1"),
          ("R@1 t2i", f"retrieval/{ret_set}/t2i_r1"),
          ("R@10 i2t", f"retrieval/{ret_set}/i2t_r10"),
          ("R@10 t2i", f"retrieval/{ret_set}/t2i_r10"),
          ("ITM R@1 i2t", f"retrieval_itm/{ret_set}/i2t_r1"),
          ("ITM R@1 t2i", f"retrieval_itm/{ret_set}/t2i_r1"),
          ("probe colour", "probe/shapes_color/top1"),
          ("probe shape", "probe/shapes_shape/top1"),
          ("probe size", "probe/shapes_size/top1"),
          ("CIDEr-D", "caption/shapes/cider"),
          ("VQA", f"vqa/{VQA_SET}/accuracy")]


# ---- which families, which configs ---------------------------------------------------------

def pretraining_families():
  """Names of the registered families that pretrain on image-text pairs by themselves."""
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  return sorted(n for n, cls in families.FAMILIES.items() if cls.PRETRAINS_ON_PAIRS)


def answers_questions(name):
  """Whether family `name` implements the contract's `answer` (VQA fine-tuning can wrap it)."""
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  return families.FAMILIES[name].answer is not families.Family.answer


def _load_config(path, arg):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_configs(config_dir=None):
  """{family: 'configs/FILE.py[:variant=tiny]'}: each family's first tiny config, a
  `*_tiny.py` file's default or a file's `variant=tiny`, files in name order."""
  config_dir = config_dir or os.path.join(ROOT, "configs")
  found = {}
  paths = sorted(glob.glob(os.path.join(config_dir, "*.py")))
  paths.sort(key=lambda p: not p.endswith("_tiny.py"))  # stable: *_tiny.py files first
  for path in paths:
    arg = None if path.endswith("_tiny.py") else "variant=tiny"
    try:
      name = _load_config(path, arg).model.name
    except Exception:  # pylint: disable=broad-except  # no tiny variant, or not a config
      continue
    rel = os.path.relpath(path, ROOT)
    found.setdefault(name, rel + (f":{arg}" if arg else ""))
  return found


def with_arg(config, extra):
  """`config` with `extra` (key=value) added to its argument."""
  if not extra:
    return config
  return f"{config},{extra}" if ":" in config else f"{config}:{extra}"


# ---- matched compute -----------------------------------------------------------------------

def budget_flops(flops_per_example, batch, steps):
  """The common budget: the cheapest family's training FLOPs at `steps`."""
  return min(flops_per_example.values()) * batch * steps


def matched_step(flops_per_example, batch, budget):
  """The largest step whose cumulative training FLOPs stay within `budget`."""
  return int(budget // (flops_per_example * batch))


def grid_step(target, period):
  """(checkpoint interval, reading step) that puts a checkpoint on `target` or at most
  m - 1 steps below it, m = ceil(target / period) the intervals up to it, none longer than
  `period`."""
  if target < 1:
    return period, 0
  m = math.ceil(target / period)
  every = target // m
  return every, every * m


def plan_runs(flops, batch, steps, points):
  """{family: {matched_step, read_step, checkpoint_every, eval_every, keep, flops_at_read,
  budget}}: evaluations on the checkpoint grid when that adds at most `points` of them
  (in the training process: cheap), else every steps // points and one `--mode=eval` of
  the read step's checkpoint (an evaluation of a fusion family costs ~2-3 of its steps x 10)."""
  budget = budget_flops(flops, batch, steps)
  period = max(steps // points, 1)
  out = {}
  for name, f in flops.items():
    target = min(matched_step(f, batch, budget), steps)
    every, read = grid_step(target, period)
    out[name] = {"matched_step": target, "read_step": read, "checkpoint_every": every,
                 "eval_every": every if steps // every <= 2 * points else period,
                 "keep": steps // every + 1, "flops_at_read": f * batch * read,
                 "budget": budget}
  return out


# ---- reading the runs ----------------------------------------------------------------------

def rows_by_step(lines):
  """{step: merged metrics} of metrics.jsonl lines (torn lines skipped)."""
  out = {}
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    out.setdefault(int(row["step"]), {}).update(row)
  return out


_LOG_LINE = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d(?:\.\d+)?) .*\] \[(\d+)\] .*\bloss=")


def samples_per_second(log_text, batch, busy_steps):
  """Median examples/s over consecutive training log lines whose interval holds no step of
  `busy_steps` (evaluations) but its end; None without two such lines."""
  times = {}
  for line in log_text.splitlines():
    found = _LOG_LINE.match(line)
    if found:
      h, m, s, step = found.groups()
      times.setdefault(int(step), int(h) * 3600 + int(m) * 60 + float(s))
  steps = sorted(times)
  rates = []
  for a, b in zip(steps, steps[1:]):
    if any(a <= x < b for x in busy_steps):
      continue
    dt = (times[b] - times[a]) % 86_400  # past midnight
    if dt > 0:
      rates.append((b - a) * batch / dt)
  return statistics.median(rates) if rates else None


def spread(values):
  """(mean, half-range) of the finite values, or (None, None)."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None, None
  return sum(values) / len(values), (max(values) - min(values)) / 2


def _cell(values, digits=3):
  mean, half = spread(values)
  if mean is None:
    return "-"
  return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(summary, columns, view):
  """Markdown: one row per family, its cells over seeds at `view` ('fixed' or 'matched')."""
  shown = [(c, k) for c, k in columns
           if any(r[view]["metrics"].get(k) for r in summary.values())]
  head = ["family", "params", "GFLOPs/ex", "samples/s", "step", "train GFLOPs"] + \
      [c for c, _ in shown]
  lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  for name, r in summary.items():
    v = r[view]
    cells = [name, f"{r['params_trainable'] / 1e6:.2f}M", f"{r['flops_per_example'] / 1e9:.3f}",
             _cell(r["samples_per_s"], 0), str(v["step"]),
             f"{v['train_flops'] / 1e9:,.0f}"]
    cells += [_cell(v["metrics"].get(k, [])) for _, k in shown]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def summarise(runs, describes, plan, batch, steps, columns):
  """{family: params, flops, samples/s over seeds, fixed and matched metrics over seeds,
  curve [(train FLOPs, metric means)]}."""
  keys = [k for _, k in columns]
  out = {}
  for name, seeds in runs.items():
    d, p = describes[name], plan[name]
    fixed = {k: [s["fixed"][k] for s in seeds if s["fixed"].get(k) is not None] for k in keys}
    matched = {k: [s["matched"][k] for s in seeds if s["matched"].get(k) is not None]
               for k in keys}
    curve = {}
    for s in seeds:
      for step, row in s["curve"].items():
        for k in keys:
          if row.get(k) is not None:
            curve.setdefault(k, {}).setdefault(int(step), []).append(row[k])
    out[name] = {
        "params_trainable": d["params_trainable"], "flops_per_example": d["flops_per_example"],
        "samples_per_s": [s["samples_per_s"] for s in seeds if s["samples_per_s"]],
        "fixed": {"step": steps, "train_flops": d["flops_per_example"] * batch * steps,
                  "metrics": {k: v for k, v in fixed.items() if v}},
        "matched": {"step": p["read_step"], "train_flops": p["flops_at_read"],
                    "metrics": {k: v for k, v in matched.items() if v}},
        "curve": {k: sorted((step * d["flops_per_example"] * batch, spread(v)[0], spread(v)[1])
                            for step, v in by_step.items()) for k, by_step in curve.items()},
        "seeds": seeds}
  return out


def figure(summary, columns, path):
  """metric against training FLOPs, one panel per metric some family reports."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.lines  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [(c, k) for c, k in columns
            if any(k in r["curve"] for r in summary.values())]
  if not panels:
    return None
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  budget = min(r["fixed"]["train_flops"] for r in summary.values())
  colour = {name: f"C{i}" for i, name in enumerate(summary)}  # one per family in every panel
  for ax, (label, key) in zip(axes.flat, panels):
    for name, r in summary.items():
      if key not in r["curve"]:
        continue
      x, y, e = zip(*r["curve"][key])
      ax.errorbar([v / 1e12 for v in x], y, yerr=e, marker="o", ms=3, capsize=2, label=name,
                  color=colour[name])
    ax.axvline(budget / 1e12, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("training TFLOPs", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  handles = [matplotlib.lines.Line2D([], [], color=c, marker="o", label=n)
             for n, c in colour.items()]
  fig.legend(handles=handles, loc="lower right", fontsize=8)
  fig.suptitle("mean over seeds (bars: half-range); dashed: the matched budget", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---- stages --------------------------------------------------------------------------------

def common_overrides(steps, seed, data_overrides, compile_cache):
  """The overrides every run gets: one image tower, batch, steps, seed, data, decoding;
  run_family adds its checkpoint and evaluation interval."""
  return ([f"--config.model.{k}={v}" for k, v in TOWER.items()] +
          [f"--config.train.batch_size={BATCH}", f"--config.train.steps={steps}",
           f"--config.seed={seed}", f"--config.train.log_every={LOG_EVERY}",
           f"--config.data.probe={PROBE}", f"--config.eval.max_examples={PROBE_EXAMPLES}",
           f"--config.train.compile_cache={compile_cache}", *data_overrides, *DECODE])


_run = caption_chain._run  # pylint: disable=protected-access  # the stage runner's command runner


def describe(py, w, name, config, overrides):
  """describe's dict of a family under the common overrides (reused when the command is)."""
  path = os.path.join(w, f"{name}.describe.json")
  cmd = [py, "main.py", f"--config={config}", "--mode=describe", *overrides]
  done = json_files.read(path)
  if done and done.get("command") == caption_chain.shell(cmd):
    return done["result"]
  result, wall = _run(cmd, os.path.join(w, f"{name}.describe.log"))
  json_files.write(path, {"result": result, "wall_s": wall, "command": caption_chain.shell(cmd)})
  return result


def read_checkpoint(py, w, run, config, overrides, step, mode):
  """--mode=eval|caption of run's checkpoint at `step` (reused when done); its metrics."""
  path = os.path.join(w, f"{run}.{mode}{step}.json")
  done = json_files.read(path)
  if done and done.get("result", {}).get("step") == step:
    return done["result"]
  cmd = [py, "main.py", f"--config={config}", f"--workdir={os.path.join(w, run)}",
         *overrides, f"--mode={mode}", f"--step={step}"]
  result, wall = _run(cmd, os.path.join(w, f"{run}.{mode}{step}.log"))
  json_files.write(path, {"result": result, "wall_s": wall, "command": caption_chain.shell(cmd)})
  return result


def vqa_stage(py, w, run, config, tower, vqa_steps):
  """Fine-tunes `run` on builtin:shapes_vqa (configs/vqa.py over its config, `tower`: the
  common overrides that still apply) for `vqa_steps`; its final metrics."""
  path, _, arg = config.partition(":")
  base = os.path.splitext(os.path.basename(path))[0]
  vqa_config = "configs/vqa.py:" + ",".join(x for x in (f"base={base}", arg) if x)
  name = f"{run}_vqa"
  overrides = tower + [f"--config.model.init_from={os.path.join(w, run)}",
                       f"--config.train.steps={vqa_steps}"]
  return caption_chain.train(py, w, name, vqa_config, overrides, vqa_steps, [])["final"]


def run_family(py, w, name, config, overrides, steps, seed, plan, caption, vqa_steps, tower):
  """One seed's run of a family: trains, checkpointing and evaluating on its grid (in the
  training process: no restart, no recompiling), captions its matched step's checkpoint
  (the trainer captions only its last), fine-tunes VQA when asked; {fixed, matched, curve,
  samples_per_s, wall_s, cpu_s}."""
  run = f"{name}_s{seed}"
  p = plan[name]
  cpu0 = _children_cpu_s()
  every = p["checkpoint_every"]
  own = overrides + [f"--config.train.checkpoint_every={every}",
                     f"--config.train.eval_every={p['eval_every']}",
                     f"--config.train.keep_checkpoints={p['keep']}"]
  stage = caption_chain.train(py, w, run, config, own, steps, [])
  with open(os.path.join(w, run, "metrics.jsonl"), encoding="utf-8") as f:
    by_step = rows_by_step(f)
  evaluated = {s: r for s, r in by_step.items()
               if any(k.startswith(("zeroshot/", "retrieval", "probe/", "caption/")) for k in r)}
  fixed = dict(by_step.get(steps, {}))
  read = p["read_step"]
  if read in evaluated:
    matched = dict(evaluated[read])
  elif read > 0:
    matched = read_checkpoint(py, w, run, config, own, read, "eval")
    if caption:
      matched.update(read_checkpoint(py, w, run, config, own, read, "caption"))
    evaluated[read] = matched
  else:
    matched = {}
  if caption and read != steps and read in evaluated and not any(
      k.startswith("caption/") for k in matched):
    matched.update(read_checkpoint(py, w, run, config, own, read, "caption"))
    evaluated[read] = matched
  if vqa_steps:
    answered = vqa_stage(py, w, run, config, tower, vqa_steps)
    fixed.update({k: v for k, v in answered.items() if k.startswith("vqa/")})
  busy = set(range(p["eval_every"], steps + 1, p["eval_every"]))
  try:
    with open(os.path.join(w, f"{run}.train.log"), encoding="utf-8") as f:
      rate = samples_per_second(f.read(), BATCH, busy)
  except OSError:
    rate = None
  return {"seed": seed, "fixed": fixed, "matched": matched, "samples_per_s": rate,
          "curve": {str(s): r for s, r in sorted(evaluated.items())},
          "wall_s": stages_wall_s(w, f"{run}."), "cpu_s": round(_children_cpu_s() - cpu0, 1)}


def stages_wall_s(w, prefix):
  """Summed wall seconds of the stage records W/PREFIX*.json (training, readings,
  describe), as measured when each ran: a rerun that reuses them reports the same."""
  total = 0.0
  for path in glob.glob(os.path.join(w, f"{prefix}*json")):
    total += (json_files.read(path) or {}).get("wall_s") or 0.0
  return round(total, 1)


def _children_cpu_s():
  """CPU seconds of this process's finished subprocesses: a stage's cost that the other
  jobs on a shared machine do not inflate as they do its wall time (0 for reused stages)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="Folder of the runs and logs.")
  parser.add_argument("--families", default="",
                      help="Comma-separated families (default: all that pretrain on pairs).")
  parser.add_argument("--steps", type=int, default=STEPS, help="Training steps of every run.")
  parser.add_argument("--seeds", default=SEEDS, help="Comma-separated seeds.")
  parser.add_argument("--data", default="shapes", help="shapes (built-in) or emoji "
                      "(../shared/data/emoji_noto's captions; zero-shot and probe on shapes).")
  parser.add_argument("--points", type=int, default=POINTS,
                      help="Evaluations of the cheapest family's run (others: more).")
  parser.add_argument("--vqa_steps", type=int, default=0,
                      help="VQA fine-tuning steps of the families that answer (0: none).")
  parser.add_argument("--results", default="",
                      help="Also copy the table, JSON and figure into this folder.")
  args = parser.parse_args()
  try:
    config_arg, data_overrides, ret_set = data_specs(args.data)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e
  if args.steps < 1 or args.points < 1 or not seeds:
    raise SystemExit("error: --steps and --points must be >= 1, --seeds name a seed")
  w = os.path.abspath(args.workdir)
  os.makedirs(w, exist_ok=True)
  py = sys.executable
  started, cpu0 = time.perf_counter(), _children_cpu_s()
  able = pretraining_families()
  configs = tiny_configs()
  wanted = [f.strip() for f in args.families.split(",") if f.strip()] or able
  unknown = [f for f in wanted if f not in able or f not in configs]
  if unknown:
    raise SystemExit(f"error: --families: {unknown} do not pretrain on pairs alone or have no "
                     f"tiny config (those that do: {[f for f in able if f in configs]})")
  columns = metric_columns(ret_set)
  cache = os.path.join(w, "compile_cache")
  tower = [f"--config.model.{k}={v}" for k, v in TOWER.items()]

  describes = {}
  for name in wanted:
    config = with_arg(configs[name], config_arg)
    describes[name] = describe(py, w, name, config,
                               common_overrides(args.steps, seeds[0], data_overrides, cache))
  plan = plan_runs({n: d["flops_per_example"] for n, d in describes.items()}, BATCH,
                   args.steps, args.points)
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  runs = {}
  for name in wanted:
    config = with_arg(configs[name], config_arg)
    caption = "caption" in families.FAMILIES[name].EVALUATIONS
    vqa = args.vqa_steps if answers_questions(name) and args.data == "shapes" else 0
    runs[name] = [run_family(py, w, name, config,
                             common_overrides(args.steps, seed, data_overrides, cache),
                             args.steps, seed, plan, caption, vqa,
                             tower + [f"--config.seed={seed}",
                                      f"--config.train.compile_cache={cache}"])
                  for seed in seeds]

  summary = summarise(runs, describes, plan, BATCH, args.steps, columns)
  shown = {k for _, k in columns}
  for r in summary.values():  # the table's metrics only: the runs' logs hold the rest
    for seed in r["seeds"]:
      for part in ("fixed", "matched"):
        seed[part] = {k: v for k, v in seed[part].items() if k in shown
                      or k in ("loss", "step")}
      seed["curve"] = {step: {k: v for k, v in row.items() if k in shown}
                       for step, row in seed["curve"].items()}
  wall = round(time.perf_counter() - started, 1)
  cpu = round(_children_cpu_s() - cpu0, 1)
  stages_wall = round(sum(stages_wall_s(w, f"{n}.describe") for n in wanted) +
                      sum(s["wall_s"] for seeds_ in runs.values() for s in seeds_), 1)
  budget = next(iter(plan.values()))["budget"]
  md = "\n".join([
      f"Same steps ({args.steps} x batch {BATCH}), seeds {','.join(map(str, seeds))}, "
      f"data {args.data}; mean ± half-range over seeds:", "",
      table(summary, columns, "fixed"), "",
      f"Matched compute ({budget / 1e9:,.0f} GFLOPs of training, the cheapest family's at "
      f"{args.steps} steps; each family read at the checkpoint at or below it):", "",
      table(summary, columns, "matched")])
  fig = figure(summary, columns, os.path.join(w, "compare_objectives.png"))
  result = {"args": vars(args), "tower": TOWER, "batch": BATCH,
            "configs": {n: configs[n] for n in wanted}, "plan": plan, "families": summary,
            "wall_s": wall, "stages_wall_s": stages_wall, "cpu_s": cpu,
            "commit": caption_chain._commit()}  # pylint: disable=protected-access
  print("\n" + md + f"\n\nwall s: this invocation {wall:.0f}, the stages when they ran "
        f"{stages_wall:.0f}; CPU s of the stages run now: {cpu:.0f}")
  with open(os.path.join(w, "compare_objectives.md"), "w", encoding="utf-8") as f:
    f.write(md + "\n")
  json_files.write(os.path.join(w, "compare_objectives.json"), result)
  if args.results:
    os.makedirs(args.results, exist_ok=True)
    for ext in ("md", "json", "png"):
      src = os.path.join(w, f"compare_objectives.{ext}")
      if os.path.exists(src) and (ext != "png" or fig):
        shutil.copy(src, os.path.join(args.results, f"compare_objectives.{ext}"))
  compact = {n: {"params": r["params_trainable"], "flops_per_example": r["flops_per_example"],
                 "samples_per_s": spread(r["samples_per_s"])[0],
                 **{view: {k: spread(v)[0] for k, v in r[view]["metrics"].items()}
                    for view in ("fixed", "matched")},
                 "matched_step": r["matched"]["step"],
                 "wall_s": sum(s["wall_s"] or 0 for s in r["seeds"]),
                 "cpu_s": sum(s["cpu_s"] for s in r["seeds"])} for n, r in summary.items()}
  print(json.dumps(json_files.strict({"steps": args.steps, "seeds": seeds, "data": args.data,
                                      "budget_flops": budget, "wall_s": wall, "cpu_s": cpu,
                                      "stages_wall_s": stages_wall,
                                      "families": compact}), sort_keys=True))


if __name__ == "__main__":
  main()
