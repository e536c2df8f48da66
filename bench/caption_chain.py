"""The BLIP-2 and prefix-captioning chains end to end on the built-in shapes data: caption
quality of the two frozen-LM captioners beside CoCa tiny and a random-caption floor.

  python bench/caption_chain.py --workdir=DIR [--steps=N]

Each stage is one `python main.py ...` command, run as a subprocess in the repository root
(W = --workdir; the README's commands with W for `workdirs`):
  clip_tiny  python main.py --config=configs/clip_tiny.py --workdir=W/clip_tiny
  lm_tiny    python main.py --config=configs/lm_tiny.py --workdir=W/lm_tiny
                 --config.data.tokenizer=W/clip_tiny/tokenizer.model
  blip2_s1   python main.py --config=configs/blip2_stage1.py:variant=tiny --workdir=W/blip2_s1
                 --config.model.init_from=W/clip_tiny --config.data.tokenizer=...
  blip2_s2   python main.py --config=configs/blip2_stage2.py:variant=tiny --workdir=W/blip2_s2
                 --config.model.init_from="W/blip2_s1;W/lm_tiny" --config.data.tokenizer=...
  prefix     python main.py --config=configs/prefix_caption.py:variant=tiny --workdir=W/prefix
                 --config.model.init_from="W/clip_tiny;W/lm_tiny" --config.data.tokenizer=...
  coca_tiny  python main.py --config=configs/coca_base.py:variant=tiny --workdir=W/coca_tiny
                 --config.data.tokenizer=...  (the same tokenizer, so all see the same pieces)
then, for the three captioners, the same command with `--mode=caption
--config.decode.method=beam --config.decode.beam_size=3` (CoCa's config says beam 4; beam 3
is the other two's, so all decode alike): BLEU-4 and CIDEr-D (vlp_jax/evaluate/
caption_metrics.py) of the 1,000 held-out scenes of builtin:shapes:test, captions in
W/NAME/captions/. --steps=N adds --config.train.steps=N to every training command (default:
the configs' own, 600).

Resumable: a stage whose workdir holds a checkpoint at the final step is not rerun (its
final metrics are read back from W/NAME/metrics.jsonl, its wall time from W/NAME.train.json
when this script ran it); one that stopped part-way resumes (main.py does that by itself).
A caption result is reused when W/NAME.caption.json is of that final step.

Also measured:
- The random-caption floor: each held-out image given a caption drawn at random from the
  20,000 training captions (scenes.make_scene(0, i), as builtin:shapes:train), scored with
  the same metric code; the mean over FLOOR_DRAWS draws. (main.py's own
  `cider_random_caption` draws from the other held-out images' captions; kept in the JSON.)
- That the frozen parts came from the named runs: the `init_from` log line of each stage,
  and for every stage with frozen parameters, each run of its init_from read into its
  final checkpoint's layout (vlp_jax.train.init_from.load) and compared array by array
  with that checkpoint's own: frozen subtrees must be equal, everything else loaded may
  have moved.

Prints a Markdown table and the checks, writes W/caption_chain.json (also the last line).

Result, 2026-12-02, `python bench/caption_chain.py --workdir=/tmp/cc_full` (600 steps, the
configs' own), 2 cores of an Intel Xeon (cpu family 6) shared with other jobs (load average
4-6): stages 1,783 s in all (30 min; one resume after the bench itself stopped between
stages, a bug since fixed: it read a config edited mid-run through stale imports). The
library moved during the run (commits 15b31c2 to 5cf8695; W/NAME.train.json records each
stage's). One seed: differences of a few hundredths are noise.

  | stage | steps | wall s | final training loss | other final metrics |
  |---|---:|---:|---|---|
  | clip_tiny | 600 | 197 | 0.570 | R@1 i2t 0.758, t2i 0.798 |
  | lm_tiny | 600 | 142 | 0.903 | lm_accuracy 0.539 |
  | blip2_s1 | 600 | 757 | 2.086 | itc 1.383, itm 0.256 (acc 0.891), itg 0.447 (acc 0.793); R@1 ITC i2t 0.721, t2i 0.754; ITM re-ranked 0.683, 0.715; zero-shot colour 1.000, shape 0.891, size 1.000 |
  | blip2_s2 | 600 | 216 | 0.789 | lm_accuracy 0.595 |
  | prefix | 600 | 194 | 0.781 | lm_accuracy 0.657 |
  | coca_tiny | 600 | 246 | 1.470 | caption 0.371 (acc 0.808), contrastive 0.727; R@1 i2t 0.678, t2i 0.737 |

  | captions of the 1,000 held-out scenes (beam 3) | BLEU-4 | CIDEr-D | first object size / colour / shape / all |
  |---|---:|---:|---|
  | BLIP-2 stage 2 (blip2_s2) | 0.211 | 1.227 | 0.74 / 0.18 / 0.28 / 0.04 |
  | prefix captioning (prefix) | 0.259 | 2.966 | 0.72 / 0.56 / 0.36 / 0.17 |
  | CoCa tiny | 0.452 | 5.476 | 0.79 / 0.75 / 0.54 / 0.45 |
  | random training caption (floor, mean of 5 draws) | 0.127 | 0.684 | 0.51 / 0.16 / 0.26 / 0.02 |

  Each caption run: 10-11 s. Frozen parts: the init_from lines name the runs; stage 1's
  image_tower equals clip_tiny's (17/17 arrays: embeddings and the first block), stage 2's
  equals stage 1's (17/17) and its lm lm_tiny's (28/28); prefix's image_tower clip_tiny's
  (31/31), lm lm_tiny's (28/28); every frozen array was loaded from a run. The trained
  parts loaded from runs moved (stage 2's qformer 0/35 and ln_vision 0/2 equal to stage 1's;
  stage 1's log_logit_scale, read from CLIP, 0/1).

Reading: both frozen-LM captioners beat the floor but stay well below CoCa, which trains its
decoder on the images. BLIP-2 stage 2 is the weakest and reads almost nothing but size from
its prompt: colour 0.18 and shape 0.28 are at chance (0.17, 0.25; "a small red circle" is
its usual guess), although its stage 1 Q-Former, from the same tower layer, knows colour
(zero-shot 1.00, ITG accuracy 0.79 against the LM's 0.54). Prefix captioning, reading the
tower's last layer, gets colour 0.56. The colour does reach stage 2's prompt: a nearest-
centroid probe (a one-off, not in this bench) of the prompts of the 405 single-shape
held-out scenes, half fitting and half tested, finds colour 0.80 (prefix's prompts 0.89,
stage 1's query embeddings 1.00); the frozen LM does not turn it into words in 600 steps.
"""
import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import json_files  # pylint: disable=wrong-import-position

TRAIN_SPLIT_SEED, TRAIN_SCENES = 0, 20_000  # vlp_jax/data/shapes.py SPLITS["train"]
EVAL_NAME = "shapes"  # builtin:shapes:test: the metric keys' set name
FLOOR_DRAWS = 5
DECODE = ["--config.decode.method=beam", "--config.decode.beam_size=3"]
CAPTIONERS = ("blip2_s2", "prefix", "coca_tiny")


def stages(w):
  """[(name, config, overrides)] in run order; overrides name the runs under w."""
  tok = f"--config.data.tokenizer={w}/clip_tiny/tokenizer.model"
  return [
      ("clip_tiny", "configs/clip_tiny.py", []),
      ("lm_tiny", "configs/lm_tiny.py", [tok]),
      ("blip2_s1", "configs/blip2_stage1.py:variant=tiny",
       [f"--config.model.init_from={w}/clip_tiny", tok]),
      ("blip2_s2", "configs/blip2_stage2.py:variant=tiny",
       [f"--config.model.init_from={w}/blip2_s1;{w}/lm_tiny", tok]),
      ("prefix", "configs/prefix_caption.py:variant=tiny",
       [f"--config.model.init_from={w}/clip_tiny;{w}/lm_tiny", tok]),
      ("coca_tiny", "configs/coca_base.py:variant=tiny", [tok]),
  ]


def config_steps(config):
  """train.steps of a `path[:arg]` config (the configs' own default)."""
  path, _, arg = config.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return int(module.get_config(arg or None).train.steps)


def init_from_runs(overrides):
  """The runs named by a --config.model.init_from override ([] if none)."""
  for o in overrides:
    if o.startswith("--config.model.init_from="):
      return [r.strip() for r in o.split("=", 1)[1].split(";") if r.strip()]
  return []


def shell(cmd):
  """The command as one would type it (the ';' values quoted)."""
  return " ".join(["python", *(shlex.quote(a) for a in cmd[1:])])


def final_metrics(lines, steps):
  """Everything logged at `steps` in metrics.jsonl lines (train metrics and evaluation)."""
  out = {}
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a torn last line
    if row.get("step") == steps:
      out.update(row)
  return out


def init_from_line(log_text):
  """The `init_from RUNS: SUMMARY` line of a training log, or None."""
  found = re.findall(r"init_from (\S.*?): ((?:\w+: \d+ arrays? \([^)]*\)(?:, )?)+)\s*$",
                     log_text, re.M)
  return f"{found[-1][0]}: {found[-1][1]}" if found else None


def random_floor(references, train_captions, draws, seed=0):
  """Mean BLEU-4 and CIDEr-D over `draws` of a random training caption per image."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vlp_jax.evaluate import caption_metrics  # pylint: disable=g-import-not-at-top
  keys = [str(i) for i in range(len(references))]
  gts = dict(zip(keys, references))
  rng = np.random.default_rng(seed)
  bleu, cider, attributes = [], [], []
  for _ in range(draws):
    picked = rng.integers(len(train_captions), size=len(keys))
    cands = {k: train_captions[j] for k, j in zip(keys, picked)}
    bleu.append(caption_metrics.bleu(cands, gts)["bleu4"])
    cider.append(caption_metrics.cider_d(cands, gts))
    attributes.append(attribute_accuracy(list(cands.values()), references))
  return {"bleu4": float(np.mean(bleu)), "cider": float(np.mean(cider)),
          "cider_min": float(np.min(cider)), "cider_max": float(np.max(cider)),
          "first_object": {k: float(np.mean([a[k] for a in attributes]))
                           for k in attributes[0]}}


def first_object(caption):
  """(size, colour, shape) of a shapes caption's first phrase 'a SIZE COLOUR SHAPE ...'."""
  words = caption.split()
  return tuple(words[1:4]) if len(words) >= 4 and words[0] == "a" else (None,) * 3


def attribute_accuracy(captions, references):
  """Share of images whose caption names the first object's size, colour, shape (and all
  three) as the first reference does: what the caption read from the image."""
  hits = [0, 0, 0, 0]
  for caption, refs in zip(captions, references):
    got, want = first_object(caption), first_object(refs[0])
    same = [g is not None and g == w for g, w in zip(got, want)]
    for i, ok in enumerate(same + [all(same)]):
      hits[i] += ok
  n = max(len(captions), 1)
  return dict(zip(("size", "color", "shape", "all"), (h / n for h in hits)))


def compare_frozen(workdir, runs, frozen):
  """{run: {subtree: [equal, loaded]}} of the arrays `runs` put into workdir's model, by
  comparing them with its last checkpoint; 'not_loaded' lists frozen subtrees' arrays that
  no run supplied (they would be frozen random values)."""
  import flax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import init_from  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=protected-access
  _, step, shapes, manager = init_from._checkpoint_params(workdir, None)
  manager.close()
  abstract = flax.traverse_util.unflatten_dict(shapes)
  own = init_from.load(workdir, "", abstract)
  out, covered = {"step": step}, set()
  for run in runs:
    counts = {}
    for path, value in init_from.load(run, "", abstract).items():
      equal = bool(np.array_equal(np.asarray(own[path]), np.asarray(value)))
      c = counts.setdefault(path[0], [0, 0])
      c[0] += equal
      c[1] += 1
      covered.add(path)
    out[run] = counts
  out["not_loaded"] = sorted("/".join(p) for p in own if p[0] in frozen and p not in covered)
  out["frozen_ok"] = not out["not_loaded"] and all(
      c[0] == c[1] for run in runs for name, c in out[run].items() if name in frozen)
  return out


def _log(message):
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit():
  """HEAD of the repository when a stage ran (the library may move between stages)."""
  proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
  return proc.stdout.strip() or None


def _run(cmd, log_path):
  """(last JSON line of stdout, wall s) of cmd in the repository root; log to log_path."""
  _log(shell(cmd))
  started = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    log.write(shell(cmd) + "\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                          check=False)
    log.write("\n--- stdout ---\n" + proc.stdout)
  wall = time.perf_counter() - started
  if proc.returncode:
    with open(log_path, encoding="utf-8") as f:
      tail = "".join(f.readlines()[-25:])
    raise SystemExit(f"failed ({proc.returncode}) after {wall:.0f}s: {shell(cmd)}\n"
                     f"log {log_path}, its tail:\n{tail}")
  lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
  return (json.loads(lines[-1]) if lines else {}), round(wall, 1)


def train(py, w, name, config, overrides, steps, steps_flag):
  """Trains one stage unless its workdir has the final checkpoint; its record."""
  workdir = os.path.join(w, name)
  record_path = os.path.join(w, f"{name}.train.json")
  log_path = os.path.join(w, f"{name}.train.log")
  cmd = [py, "main.py", f"--config={config}", f"--workdir={workdir}", *overrides, *steps_flag]
  record = json_files.read(record_path) or {}
  if os.path.isdir(os.path.join(workdir, "checkpoints", str(steps))):
    _log(f"{name}: finished (checkpoint {steps}), not rerun")
  else:
    result, wall = _run(cmd, log_path)
    record = {"result": result, "wall_s": wall, "command": shell(cmd), "commit": _commit()}
    json_files.write(record_path, record)
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      final = final_metrics(f, steps)
  except OSError:
    final = record.get("result", {})
  try:
    with open(log_path, encoding="utf-8") as f:
      init_line = init_from_line(f.read())
  except OSError:
    init_line = None
  return {"command": shell(cmd), "steps": steps, "wall_s": record.get("wall_s"),
          "commit": record.get("commit"),
          "final": final, "init_from": init_line}


def caption(py, w, name, config, overrides, steps):
  """--mode=caption of a trained stage (reused when done at `steps`); its metrics."""
  workdir = os.path.join(w, name)
  path = os.path.join(w, f"{name}.caption.json")
  cmd = [py, "main.py", f"--config={config}", f"--workdir={workdir}", *overrides,
         "--mode=caption", *DECODE]
  done = json_files.read(path)
  if done and done.get("result", {}).get("step") == steps:
    _log(f"{name}: captions of step {steps} done, not rerun")
    return done
  result, wall = _run(cmd, os.path.join(w, f"{name}.caption.log"))
  done = {"result": result, "wall_s": wall, "command": shell(cmd), "commit": _commit()}
  json_files.write(path, done)
  return done


def held_out_references(w, name, steps):
  """References per held-out image from the captions file --mode=caption wrote."""
  path = os.path.join(w, name, "captions", f"{EVAL_NAME}_step{steps}.jsonl")
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return rows, [r["references"] for r in rows]


def _fmt(value, digits=3):
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def table(results, floor):
  """Markdown: one row per stage, then the caption comparison."""
  out = ["| stage | steps | wall s | final training loss | other final metrics |",
         "|---|---:|---:|---|---|"]
  keep = re.compile(r"^(\w+_(loss|accuracy)|retrieval\w*/shapes/(t2i|i2t)_r1)$")
  for name, r in results["stages"].items():
    f = r["final"]
    loss = f.get("loss")
    others = ", ".join(f"{k.replace('/shapes', '')} {_fmt(v)}" for k, v in sorted(f.items())
                       if keep.match(k) and v is not None)
    out.append(f"| {name} | {r['steps']} | {_fmt(r['wall_s'], 0)} | {_fmt(loss)} | "
               f"{others or '-'} |")
  out += ["", "| captions of the 1,000 held-out scenes (beam 3) | BLEU-4 | CIDEr-D | "
          "first object size / colour / shape / all | mean words | caption wall s |",
          "|---|---:|---:|---|---:|---:|"]
  attrs = lambda a: " / ".join(_fmt(a[k], 2) for k in ("size", "color", "shape", "all"))
  for name in CAPTIONERS:
    c = results["captions"].get(name)
    if not c:
      continue
    m = c["result"]
    out.append(f"| {name} | {_fmt(m.get(f'caption/{EVAL_NAME}/bleu4'))} | "
               f"{_fmt(m.get(f'caption/{EVAL_NAME}/cider'))} | "
               f"{attrs(results['first_object'][name])} | "
               f"{_fmt(m.get(f'caption/{EVAL_NAME}/mean_words'), 2)} | {_fmt(c['wall_s'], 0)} |")
  if floor:
    out.append(f"| random training caption (floor, mean of {FLOOR_DRAWS}) | "
               f"{_fmt(floor['bleu4'])} | {_fmt(floor['cider'])} | "
               f"{attrs(floor['first_object'])} | - | - |")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="Folder of the runs and logs.")
  parser.add_argument("--steps", type=int, default=None,
                      help="Training steps of every stage (default: the configs' own).")
  args = parser.parse_args()
  w = os.path.abspath(args.workdir)
  os.makedirs(w, exist_ok=True)
  py = sys.executable
  started = time.perf_counter()
  steps_flag = [f"--config.train.steps={args.steps}"] if args.steps else []
  results = {"args": vars(args), "stages": {}, "captions": {}, "frozen": {}}
  plan = stages(w)
  # All read now: a config edited while the chain runs would meet this process's stale
  # vlp_jax imports.
  all_steps = {name: args.steps or config_steps(config) for name, config, _ in plan}
  for name, config, overrides in plan:
    results["stages"][name] = train(py, w, name, config, overrides, all_steps[name],
                                    steps_flag)
  for name, config, overrides in plan:
    if name in CAPTIONERS:
      results["captions"][name] = caption(py, w, name, config, overrides,
                                          results["stages"][name]["steps"])

  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  frozen_of = {"blip2_s1": ("image_tower",), "blip2_s2": families.FAMILIES["blip2_lm"].FROZEN,
               "prefix": families.FAMILIES["prefix_lm"].FROZEN}
  for name, config, overrides in plan:
    if name in frozen_of:
      results["frozen"][name] = compare_frozen(os.path.join(w, name),
                                               init_from_runs(overrides), frozen_of[name])

  from vlp_jax.data import scenes  # pylint: disable=g-import-not-at-top
  _log(f"the floor: {TRAIN_SCENES} training captions")
  train_captions = [scenes.make_scene(TRAIN_SPLIT_SEED, i)["caption"]
                    for i in range(TRAIN_SCENES)]
  rows, refs = held_out_references(w, CAPTIONERS[0], results["stages"][CAPTIONERS[0]]["steps"])
  results["floor"] = random_floor(refs, train_captions, FLOOR_DRAWS)
  captions = {n: [r["caption"] for r in
                   held_out_references(w, n, results["stages"][n]["steps"])[0]]
              for n in CAPTIONERS}
  results["first_object"] = {n: attribute_accuracy(c, refs) for n, c in captions.items()}
  results["examples"] = {n: c[:5] for n, c in captions.items()}
  results["examples"]["references"] = [r["references"][0] for r in rows[:5]]
  results["wall_s"] = {"invocation": round(time.perf_counter() - started, 1),
                       "stages": round(sum((r["wall_s"] or 0) for r in
                                           [*results["stages"].values(),
                                            *results["captions"].values()]), 1)}

  print(f"\nbuiltin:shapes:train -> builtin:shapes:test, workdir {w}\n")
  print(table(results, results["floor"]))
  print("\nmain.py's own floor (another held-out image's caption), CIDEr-D: " + ", ".join(
      f"{n} {_fmt(c['result'].get(f'caption/{EVAL_NAME}/cider_random_caption'))}"
      for n, c in results["captions"].items()))
  print("\nFrozen parts (init_from log line; arrays equal to the named run's / loaded):")
  for name, check in results["frozen"].items():
    print(f"- {name}: log `init_from {results['stages'][name]['init_from']}`")
    for run in init_from_runs(dict((n, o) for n, _, o in plan)[name]):
      print(f"  - from {os.path.basename(run)}: " + ", ".join(
          f"{sub} {c[0]}/{c[1]}" for sub, c in sorted(check[run].items())))
    print(f"  - frozen subtrees {list(frozen_of[name])} all equal and all loaded: "
          f"{check['frozen_ok']}" + (f" (not loaded: {check['not_loaded'][:5]})"
                                      if check["not_loaded"] else ""))
  print("\nExamples (first 5 held-out scenes):")
  for i, ref in enumerate(results["examples"]["references"]):
    print(f"- true: {ref!r}; " + "; ".join(f"{n}: {results['examples'][n][i]!r}"
                                            for n in CAPTIONERS))
  print(f"\nwall s: this invocation {results['wall_s']['invocation']:.0f}, sum of the stages "
        f"{results['wall_s']['stages']:.0f}")
  json_files.write(os.path.join(w, "caption_chain.json"), results)
  print(json.dumps(json_files.strict(results), sort_keys=True, allow_nan=False))


if __name__ == "__main__":
  main()
