# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # vlp_jax quick start: train a tiny CoCa, look at what it learned
#
# Trains CoCa (contrastive + captioning) at its `tiny` size on the built-in shapes data:
# generated scenes of 1-3 coloured shapes with English captions, nothing to download.
# Then plots the loss curves, exports the run, loads the export with `vlp_jax.load` and
# shows held-out scenes with their zero-shot labels (colour, shape, size) and the captions
# the model writes.
#
# On a Colab GPU or TPU runtime the default 600 steps take a few minutes; on a CPU, set
# `STEPS` lower (the curves then say little).

# %% tags=["parameters"]
# The repository to install from when vlp_jax is not importable (Colab). Placeholder:
# replace OWNER with the GitHub owner of the repository you opened this notebook from.
REPO_URL = "https://github.com/OWNER/vlp_jax"
STEPS = 0  # training steps; 0: the config's (600)
MAX_EXAMPLES = 256  # held-out scenes evaluated (during training and below)
SHOW = 8  # scenes shown in the grid
SCENES = 0  # 0: the built-in shapes data (20,000 scenes); N: N generated scenes, a quick run
WORKDIR = "workdirs/quick_start"  # checkpoints, metrics.jsonl, and the export in WORKDIR/export
RESULTS = ""  # a JSON file to write the summary to (tests read it); empty: none

# %% [markdown]
# ## Set-up
# Finds the repository (`main.py` and `configs/` are not part of the installed package):
# the checkout this notebook lives in, or a clone of `REPO_URL`; installs the package
# when `import vlp_jax` fails, with jax for the runtime's accelerator.

# %%
import importlib.util
import os
import shutil
import subprocess
import sys


def find_repo(start="."):
  """The checkout above `start` that holds main.py, or None."""
  path = os.path.abspath(start)
  for _ in range(3):
    if all(os.path.exists(os.path.join(path, name)) for name in ("main.py", "configs")):
      return path
    path = os.path.dirname(path)
  return None


REPO_DIR = find_repo()
if REPO_DIR is None:
  REPO_DIR = os.path.abspath("vlp_jax_repo")
  if not os.path.isdir(REPO_DIR):
    subprocess.run(["git", "clone", "-q", "--depth=1", REPO_URL, REPO_DIR], check=True)
try:
  import vlp_jax
except ImportError:
  accelerator = ("[tpu]" if os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ
                 else "[gpu]" if shutil.which("nvidia-smi") else "")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", REPO_DIR + accelerator],
                 check=True)
  import vlp_jax
sys.path.insert(0, REPO_DIR)
import main  # the repository's entry point: main.run(config, mode, workdir)

import jax
print("devices:", jax.devices())

# %% [markdown]
# ## The config
# `configs/coca_base.py:variant=tiny` as `main.py --config=...` reads it; fields are
# changed in Python as `--config.train.steps=N` would.

# %%
import json

import numpy as np


def load_config(name, arg=""):
  """configs/NAME.py's get_config(arg), as main.py's --config=configs/NAME.py:ARG."""
  path = os.path.join(REPO_DIR, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


config = load_config("coca_base", "variant=tiny")
if STEPS:
  config.train.steps = STEPS
config.train.log_every = max(1, config.train.steps // 30)  # about 30 points per curve
config.eval.max_examples = MAX_EXAMPLES
if SCENES:  # a jsonl folder of generated scenes: no TFDS preparation, a small vocabulary
  from vlp_jax.data import jsonl_writer, scenes
  folder = os.path.join(WORKDIR, "scenes")
  jsonl_writer.write_jsonl_folder(folder, [
      (f"{i:05d}.png", s["png"], s["caption"]) for i, s in
      ((i, scenes.make_scene(7, i)) for i in range(SCENES))])
  config.data.train, config.data.eval = f"jsonl:{folder}:train", f"jsonl:{folder}:test"
  config.data.holdout_percent = 20
print(config.model)

# %% [markdown]
# ## Train
# One call does what `python main.py --config=configs/coca_base.py:variant=tiny
# --workdir=WORKDIR` does; it returns the last evaluation. A second run of this cell
# resumes from the workdir's latest checkpoint.

# %%
final = main.run(config, "train", WORKDIR)
print(json.dumps(main.strict_json(final), indent=1, sort_keys=True)[:2000])

# %% [markdown]
# ## Loss curves
# `WORKDIR/metrics.jsonl` holds one JSON object per logged step (TensorBoard reads the
# same values from `WORKDIR`).

# %%
import matplotlib.pyplot as plt

with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
  rows = [json.loads(line) for line in f]
train_rows = [r for r in rows if "loss" in r]
fig, ax = plt.subplots(figsize=(7, 4))
for key in ("loss", "contrastive_loss", "caption_loss"):
  points = [(r["step"], r[key]) for r in train_rows if r.get(key) is not None]
  ax.plot(*zip(*points), marker="." if len(points) < 20 else None, label=key)
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_title("CoCa tiny on shapes: loss = contrastive + 2 x captioning")
ax.legend()
plt.show()

# %% [markdown]
# ## Export and load
# An export holds the parameters (unrolled, no optimizer state), the config and the
# tokenizer: `python main.py --mode=export --workdir=WORKDIR --out=DIR`.

# %%
export_dir = os.path.join(WORKDIR, "export")
if os.path.exists(export_dir):  # an earlier run of this cell; export never overwrites
  shutil.rmtree(export_dir)
manifest = main.run(config, "export", WORKDIR, out=export_dir)
print(manifest)
model = vlp_jax.load(export_dir)
print(model)

# %% [markdown]
# ## Held-out scenes: zero-shot labels and captions
# The test split's zero-shot tasks classify each single-shape scene's colour, shape and
# size by prompts (e.g. "a small {} circle" for colours, ensembled by max); scenes with
# several shapes have no label (-1) and count for none of the accuracies.

# %%
ev = model.eval_set("builtin:shapes:test", MAX_EXAMPLES)
predicted, accuracy = {}, {}
for name, task in ev.zeroshot_tasks.items():
  result = model.zero_shot(ev.images, task.classnames, task.templates, task.ensemble)
  predicted[name] = result.labels
  labelled = ev.labels[name] >= 0
  accuracy[name] = float(np.mean(result.indices[labelled] == ev.labels[name][labelled]))
  print(f"{name}: accuracy {accuracy[name]:.3f} over {labelled.sum()} scenes "
        f"(chance {1 / len(task.classnames):.3f})")

shown = ev.images[:SHOW]
captions = model.caption(shown, method="greedy")
columns = 4
fig, axes = plt.subplots((len(shown) + columns - 1) // columns, columns,
                         figsize=(3.2 * columns, 3.6 * ((len(shown) + columns - 1) // columns)),
                         squeeze=False)
for i, ax in enumerate(axes.flat):
  ax.axis("off")
  if i < len(shown):
    ax.imshow(shown[i])
    labels = "/".join(predicted[name][i] for name in ("color", "shape", "size"))
    ax.set_title(f"{labels}\n{captions[i][:40]}\ntrue: {ev.captions[i][:40]}", fontsize=8)
plt.tight_layout()
plt.show()

# %%
summary = dict(steps=int(config.train.steps), final_loss=train_rows[-1]["loss"],
               logged_steps=[r["step"] for r in train_rows], zero_shot_accuracy=accuracy,
               captions=captions, export=os.path.abspath(export_dir))
print(json.dumps(main.strict_json(summary)))
if RESULTS:
  with open(RESULTS, "w") as f:
    json.dump(main.strict_json(summary), f)
