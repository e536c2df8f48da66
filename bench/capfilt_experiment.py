"""CapFilt end to end on the built-in shapes data: does BLIP's caption-and-filter clean a
noisy copy of builtin:shapes:train well enough that a model trained on its output beats one
trained on the noisy data?

  python bench/capfilt_experiment.py [--root=/tmp/capfilt_experiment] [--reuse]
      [--steps=600] [--train_size=20000] [--corrupt=0.3] [--threshold=0.5]
      [--with_clean_reference]

Stages, each a subprocess of the repository's own commands (logs and outputs under --root;
--reuse skips a stage whose output is complete):
 1. noisy/: the first --train_size scenes of builtin:shapes:train (scenes.make_scene(0, i),
    what shapes.py generates) as a `jsonl:` folder, --corrupt of the captions (seeded) each
    replaced by another scene's different caption; truth.jsonl (beside, not inside, the
    folder) records every record's true caption and whether it was corrupted.
 2. w_noisy/: BLIP tiny (configs/blip_base.py:variant=tiny) trained --steps on jsonl:noisy.
 3. capfilt/: `python -m vlp_jax.tools.capfilt` with w_noisy on jsonl:noisy (keep web and
    synthetic, --threshold). Scored here against truth.jsonl: a corrupted web caption is
    "found" when dropped; precision = dropped & corrupted / dropped, recall = dropped &
    corrupted / corrupted; ROC AUC of the web captions' match probability (threshold-free);
    synthetic captions kept, exact match with the true caption, CIDEr-D against it
    (vlp_jax/evaluate/caption_metrics.py); the share of written pairs that are a correct
    caption (web uncorrupted, or synthetic exactly the true caption: a lower bound).
 4. w_capfilt/: BLIP tiny trained --steps on jsonl:capfilt (a fresh tokenizer, as any run on
    new data). With --with_clean_reference also w_clean/ on the original captions of the same
    scenes (the upper bound).
 5. `main.py --mode=eval` of each run on builtin:shapes:test: retrieval R@1 (ITC and
    re-ranked by ITM) and zero-shot top-1 per attribute; caption CIDEr comes from the
    evaluation at the end of training (the same final parameters; --mode=eval does not
    caption).

Prints a Markdown table (one column per run) and, last, one JSON object.

Result, 2026-12-02, `python bench/capfilt_experiment.py` (the defaults), 37m40s wall on 2
CPU cores shared with other jobs (each 600-step training ran at 0.5-1.0 steps/s instead of
~1.4 on free cores; about 17 min each of the 38); one seed, so differences of a few points
are within run-to-run noise:

  | metric | noisy (30% corrupted) | CapFilt output | clean (upper bound)* |
  |---|---:|---:|---:|
  | training pairs | 20000 | 23334 | 20000 |
  | t2i R@1 (ITC) | 0.314 | 0.440 | 0.581 |
  | i2t R@1 (ITC) | 0.123 | 0.361 | 0.506 |
  | t2i R@1 (ITM re-ranked) | 0.696 | 0.752 | 0.847 |
  | i2t R@1 (ITM re-ranked) | 0.451 | 0.679 | 0.800 |
  | zero-shot color top-1 | 1.000 | 1.000 | 1.000 |
  | zero-shot shape top-1 | 0.212 | 0.588 | 0.556 |
  | zero-shot size top-1 | 0.748 | 0.968 | 0.988 |
  | caption CIDEr (beam 3) | 5.101 | 5.270 | 5.597 |

  * added afterwards by `--reuse --with_clean_reference` (the other stages reused; its
    training took 443 s, the CPU being freer by then).

  CapFilt (threshold 0.5, captioner and filter: the noisy run):
  - web captions: 20000, corrupted 6000; dropped 4346, of them corrupted 3937: precision
    0.906, recall 0.656; ROC AUC of the match probability 0.956 (mean p: clean 0.816,
    corrupted 0.384); corrupted share of kept web captions 0.132 (input 0.300)
  - synthetic captions: 20000, kept 0.384; exact true caption 0.128 (of kept: 0.328);
    CIDEr-D vs the true caption 3.186
  - output: 23334 pairs, 0.690 of them a correct caption (web uncorrupted or synthetic exact)
  - wall s: data 16, train_noisy 1065, capfilt 129, train_capfilt 1012, eval_noisy 19,
    eval_capfilt 17; total 2259

Reading: the filter trained on the noisy data itself separates the corrupted captions well
(AUC 0.96) and at 0.5 cuts the web noise from 30% to 13% (precision 0.91, recall 0.66), and
the run on its output is better on every metric (colour: 1.0 for all), most on i2t R@1
(+0.24 ITC, +0.23 ITM) and zero-shot shape/size. The synthetic captions are the weak half:
62% are dropped, and of the kept ones only 33% are exactly the true caption (61% for one-
shape scenes, ~0 for two or three shapes; some of the rest describe the scene in another
order, which exact match counts wrong), so by exact match the written pairs (69% correct)
are no cleaner than the input (70%); the gain comes from the cleaner web captions and the
extra pairs. The clean captions remain clearly better on retrieval (ITC R@1 0.58/0.51 vs
0.44/0.36) and CIDEr (5.60 vs 5.27): CapFilt closes 37-65% of the noisy-to-clean gap in the
four R@1 rows. 2,705 images lost both captions and are absent from the CapFilt set. The
--mode=eval numbers equal those of the evaluation at the end of training (same parameters).
--with_clean_reference (one more ~17-minute training here) is off by default: it takes the
total past ~55 minutes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import json_files  # pylint: disable=wrong-import-position

CONFIG = "configs/blip_base.py:variant=tiny"
EVAL = "builtin:shapes:test"
TRAIN_SPLIT_SEED, TRAIN_SCENES = 0, 20_000  # vlp_jax/data/shapes.py SPLITS["train"]
ROWS = (  # (metric key, row label)
    ("retrieval/shapes/t2i_r1", "t2i R@1 (ITC)"),
    ("retrieval/shapes/i2t_r1", "i2t R@1 (ITC)"),
    ("retrieval_itm/shapes/t2i_r1", "t2i R@1 (ITM re-ranked)"),
    ("retrieval_itm/shapes/i2t_r1", "i2t R@1 (ITM re-ranked)"),
    ("zeroshot/shapes_color/top1", "zero-shot color top-1"),
    ("zeroshot/shapes_shape/top1", "zero-shot shape top-1"),
    ("zeroshot/shapes_size/top1", "zero-shot size top-1"),
    ("caption/shapes/cider", "caption CIDEr (beam 3)"),
)


def _log(message):
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run(cmd, log_path):
  """Runs cmd in the repository root, stdout+stderr to log_path; its last JSON line."""
  _log(" ".join(cmd[1:]))
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                          check=False)
    log.write("\n--- stdout ---\n" + proc.stdout)
  if proc.returncode:
    raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
  lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
  return json.loads(lines[-1])


def _fresh(path):
  """Removes a stage's own output (a folder this script created) before redoing it."""
  if os.path.isdir(path):
    shutil.rmtree(path)
  elif os.path.exists(path):
    os.remove(path)


def write_data(root, train_size, corrupt, seed):
  """noisy/ and clean/ jsonl folders of the first train_size training scenes; truth.jsonl."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import jsonl_writer, scenes  # pylint: disable=g-import-not-at-top
  scenes_ = [scenes.make_scene(TRAIN_SPLIT_SEED, i) for i in range(train_size)]
  captions = [s["caption"] for s in scenes_]
  rng = np.random.default_rng(seed)
  corrupted = set(rng.choice(train_size, size=int(round(corrupt * train_size)),
                             replace=False).tolist())
  noisy = list(captions)
  for i in sorted(corrupted):
    while True:  # another scene's caption that differs from this one's
      j = int(rng.integers(train_size))
      if captions[j] != captions[i]:
        noisy[i] = captions[j]
        break
  names = [f"{i:05d}.png" for i in range(train_size)]
  for folder, texts in (("noisy", noisy), ("clean", captions)):
    _fresh(os.path.join(root, folder))
    jsonl_writer.write_jsonl_folder(
        os.path.join(root, folder),
        ((n, s["png"], t) for n, s, t in zip(names, scenes_, texts)))
  with open(os.path.join(root, "truth.jsonl"), "w", encoding="utf-8") as f:
    for i, name in enumerate(names):
      f.write(json.dumps({"key": os.path.join("images", name), "caption": captions[i],
                          "noisy_caption": noisy[i], "corrupted": i in corrupted}) + "\n")
  return {"records": train_size, "corrupted": len(corrupted)}


def _auc(positives, negatives):
  """P(score of a random positive > a random negative), ties half (Mann-Whitney)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not len(positives) or not len(negatives):
    return float("nan")
  scores = np.concatenate([positives, negatives])
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  i = 0
  while i < len(scores):  # average ranks of ties
    j = i
    while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  n1, n0 = len(positives), len(negatives)
  return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def score_capfilt(root, out):
  """Precision and recall of dropping corrupted web captions, synthetic caption quality."""
  from vlp_jax.evaluate import caption_metrics  # pylint: disable=g-import-not-at-top
  truth = {}
  with open(os.path.join(root, "truth.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      truth[r["key"]] = r
  web = {"corrupted": [], "clean": []}  # match probabilities
  dropped = dropped_corrupted = n_corrupted = 0
  synthetic, references = {}, {}
  syn_kept = syn_exact = syn_kept_exact = 0
  pairs = correct_pairs = 0
  with open(os.path.join(out, "capfilt_scores.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      t = truth[r["key"]]
      for c in r["captions"]:
        if c["origin"] == "web":
          bad = c["caption"] != t["caption"]
          assert bad == t["corrupted"], (r["key"], c["caption"], t)
          web["corrupted" if bad else "clean"].append(c["p"])
          n_corrupted += bad
          if not c["kept"]:
            dropped += 1
            dropped_corrupted += bad
          else:
            pairs += 1
            correct_pairs += not bad
        else:
          exact = c["caption"].strip() == t["caption"]
          synthetic[r["key"]] = c["caption"]
          references[r["key"]] = [t["caption"]]
          syn_exact += exact
          if c["kept"]:
            syn_kept += 1
            syn_kept_exact += exact
            pairs += 1
            correct_pairs += exact
  import numpy as np  # pylint: disable=g-import-not-at-top
  n_syn = len(synthetic)
  web_kept = len(web["clean"]) + len(web["corrupted"]) - dropped
  return {
      "web/corrupted": n_corrupted,
      "web/dropped": dropped,
      "web/dropped_corrupted": dropped_corrupted,
      "web/precision": dropped_corrupted / dropped if dropped else float("nan"),
      "web/recall": dropped_corrupted / n_corrupted if n_corrupted else float("nan"),
      # Corrupted share of the web captions CapFilt kept (the input had --corrupt).
      "web/kept_corrupted_share": ((n_corrupted - dropped_corrupted) / web_kept if web_kept
                                   else float("nan")),
      # ROC AUC of "clean" vs "corrupted" by match probability: 0.5 = no signal.
      "web/auc": _auc(np.array(web["clean"]), np.array(web["corrupted"])),
      "web/p_mean_clean": float(np.mean(web["clean"])) if web["clean"] else float("nan"),
      "web/p_mean_corrupted": (float(np.mean(web["corrupted"])) if web["corrupted"]
                               else float("nan")),
      "synthetic/captions": n_syn,
      "synthetic/kept_share": syn_kept / n_syn if n_syn else float("nan"),
      "synthetic/exact": syn_exact / n_syn if n_syn else float("nan"),
      "synthetic/kept_exact": syn_kept_exact / syn_kept if syn_kept else float("nan"),
      "synthetic/cider": (caption_metrics.cider_d(synthetic, references) if n_syn
                          else float("nan")),
      "output/pairs": pairs,
      "output/correct_share": correct_pairs / pairs if pairs else float("nan"),
  }


def _overrides(data, steps):
  return [f"--config={CONFIG}", f"--config.data.train=jsonl:{data}",
          f"--config.data.eval={EVAL}", f"--config.train.steps={steps}"]


def stage(path, want, reuse, compute):
  """compute() -> dict saved at path, unless --reuse and path holds one made with `want`."""
  done = json_files.read(path)
  if reuse and done and all(done.get("args", {}).get(k) == v for k, v in want.items()):
    _log(f"reusing {path}")
    return done, False
  started = time.perf_counter()
  result = compute()
  result = dict(result, args=want, wall_s=round(time.perf_counter() - started, 1))
  json_files.write(path, result)
  return result, True


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/capfilt_experiment",
                      help="Work folder: data, runs, logs (created).")
  parser.add_argument("--reuse", action="store_true",
                      help="Skip the stages whose outputs exist with the same settings.")
  parser.add_argument("--steps", type=int, default=600, help="Training steps of every run.")
  parser.add_argument("--train_size", type=int, default=TRAIN_SCENES,
                      help=f"First N scenes of builtin:shapes:train (<= {TRAIN_SCENES}).")
  parser.add_argument("--corrupt", type=float, default=0.3,
                      help="Share of captions replaced by another scene's caption.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the corruption.")
  parser.add_argument("--threshold", type=float, default=0.5,
                      help="CapFilt: keep a caption whose ITM match probability is >= this.")
  parser.add_argument("--with_clean_reference", action="store_true",
                      help="Also train and evaluate on the original captions (upper bound).")
  args = parser.parse_args()
  if not 0 < args.train_size <= TRAIN_SCENES:
    parser.error(f"--train_size must be in 1..{TRAIN_SCENES}")
  if not 0 <= args.corrupt <= 1:
    parser.error("--corrupt must be in [0, 1]")
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  py = sys.executable
  started = time.perf_counter()
  walls = {}
  # A stage redone invalidates everything after it.
  reuse = args.reuse

  data_args = {"train_size": args.train_size, "corrupt": args.corrupt, "seed": args.seed}
  data, fresh = stage(os.path.join(root, "data.json"), data_args, reuse,
                      lambda: write_data(root, args.train_size, args.corrupt, args.seed))
  walls["data"] = data["wall_s"]
  reuse = reuse and not fresh
  noisy, clean, out = (os.path.join(root, n) for n in ("noisy", "clean", "capfilt"))

  def train(name, folder):
    workdir = os.path.join(root, f"w_{name}")
    def compute():
      _fresh(workdir)
      return {"final": _run([py, "main.py", *_overrides(folder, args.steps),
                             f"--workdir={workdir}"],
                            os.path.join(root, f"train_{name}.log"))}
    return stage(os.path.join(root, f"train_{name}.json"), {**data_args, "steps": args.steps},
                 reuse, compute)

  def evaluate(name, folder):
    workdir = os.path.join(root, f"w_{name}")
    return stage(os.path.join(root, f"eval_{name}.json"), {**data_args, "steps": args.steps},
                 reuse, lambda: {"metrics": _run(
                     [py, "main.py", *_overrides(folder, args.steps), f"--workdir={workdir}",
                      "--mode=eval"], os.path.join(root, f"eval_{name}.log"))})

  runs = {}
  result, fresh = train("noisy", noisy)
  reuse = reuse and not fresh
  walls["train_noisy"] = result["wall_s"]
  runs["noisy"] = result

  def capfilt():
    _fresh(out)
    summary = _run([py, "-m", "vlp_jax.tools.capfilt", *_overrides(noisy, args.steps),
                    f"--workdir={os.path.join(root, 'w_noisy')}", f"--data=jsonl:{noisy}",
                    f"--out={out}", f"--threshold={args.threshold}", "--keep=web,synthetic"],
                   os.path.join(root, "capfilt.log"))
    return {"summary": summary, "scores": score_capfilt(root, out)}
  cf, fresh = stage(os.path.join(root, "capfilt.json"),
                    {**data_args, "steps": args.steps, "threshold": args.threshold}, reuse,
                    capfilt)
  walls["capfilt"] = cf["wall_s"]
  if not cf["summary"]["pairs_written"]:
    raise SystemExit(f"CapFilt kept no caption at --threshold={args.threshold}: nothing to "
                     f"train on; scores: {json.dumps(json_files.strict(cf['scores']), sort_keys=True)}")
  reuse = reuse and not fresh

  result, _ = train("capfilt", out)
  walls["train_capfilt"] = result["wall_s"]
  runs["capfilt"] = result
  if args.with_clean_reference:
    result, _ = train("clean", clean)
    walls["train_clean"] = result["wall_s"]
    runs["clean"] = result
  folders = {"noisy": noisy, "capfilt": out, "clean": clean}
  metrics = {}
  for name in runs:
    ev, _ = evaluate(name, folders[name])
    walls[f"eval_{name}"] = ev["wall_s"]
    metrics[name] = dict(ev["metrics"])
    for key in ("caption/shapes/cider",):  # --mode=eval does not caption
      if key in runs[name]["final"]:
        metrics[name][key] = runs[name]["final"][key]
  total = time.perf_counter() - started

  s, summary = cf["scores"], cf["summary"]
  labels = {"noisy": f"noisy ({args.corrupt:.0%} corrupted)",
            "capfilt": "CapFilt output", "clean": "clean (upper bound)"}
  print(f"\nBLIP tiny, {args.steps} steps each, {args.train_size} scenes of builtin:shapes:train, "
        f"eval {EVAL} (1,000 images)\n")
  print("| metric | " + " | ".join(labels[n] for n in runs) + " |")
  print("|---|" + "---:|" * len(runs))
  print("| training pairs | " + " | ".join(
      str(args.train_size if n != "capfilt" else summary["pairs_written"]) for n in runs) + " |")
  for key, label in ROWS:
    values = [metrics[n].get(key) for n in runs]
    print(f"| {label} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
  print(f"\nCapFilt (threshold {args.threshold}, captioner and filter: the noisy run):")
  print(f"- web captions: {summary['web_captions']}, corrupted {s['web/corrupted']}; dropped "
        f"{s['web/dropped']}, of them corrupted {s['web/dropped_corrupted']}: precision "
        f"{s['web/precision']:.3f}, recall {s['web/recall']:.3f}; ROC AUC of the match "
        f"probability {s['web/auc']:.3f} (mean p: clean {s['web/p_mean_clean']:.3f}, "
        f"corrupted {s['web/p_mean_corrupted']:.3f}); corrupted share of kept web captions "
        f"{s['web/kept_corrupted_share']:.3f} (input {args.corrupt:.3f})")
  print(f"- synthetic captions: {s['synthetic/captions']}, kept {s['synthetic/kept_share']:.3f};"
        f" exact true caption {s['synthetic/exact']:.3f} (of kept: "
        f"{s['synthetic/kept_exact']:.3f}); CIDEr-D vs the true caption "
        f"{s['synthetic/cider']:.3f}")
  print(f"- output: {s['output/pairs']} pairs, {s['output/correct_share']:.3f} of them a "
        f"correct caption (web uncorrupted or synthetic exact)")
  print("- wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) +
        f"; sum of stages {sum(walls.values()):.0f}, this invocation {total:.0f}")
  out_json = {"args": vars(args), "capfilt": {**s, **{f"summary/{k}": v for k, v in
                                                     summary.items() if isinstance(v, int)}},
              "metrics": {n: {k: metrics[n].get(k) for k, _ in ROWS} for n in runs},
              "wall_s": {**walls, "stages": round(sum(walls.values()), 1),
                         "invocation": round(total, 1)}}
  print(json.dumps(json_files.strict(out_json), sort_keys=True, allow_nan=False))


if __name__ == "__main__":
  main()
