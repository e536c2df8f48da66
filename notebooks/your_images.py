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
# # Your images: zero-shot classification and text-to-image search
#
# Loads an exported model (`EXPORT`: what `quick_start.ipynb` writes to
# `workdirs/quick_start/export`, or any `python main.py --mode=export` folder, or
# `open_clip:FILE` / `hf:DIR` with a `TOKENIZER`), classifies every image of a folder among
# class names, and finds the best images for a few text queries.
#
# `IMAGES` is a folder of .jpg/.png files (upload yours to Colab's file panel); left empty,
# the notebook writes a few generated shapes scenes there, so it runs offline. A model
# trained on the shapes data knows colours, shapes and sizes, nothing else.

# %% tags=["parameters"]
# The repository to install from when vlp_jax is not importable (Colab). Placeholder:
# replace OWNER with the GitHub owner of the repository you opened this notebook from.
REPO_URL = "https://github.com/OWNER/vlp_jax"
EXPORT = "workdirs/quick_start/export"  # an export folder, a run's workdir, open_clip:FILE, hf:DIR
TOKENIZER = ""  # open_clip:/hf: models only: clip_bpe:PATH or spm:PATH
IMAGES = ""  # a folder of images; empty: generated scenes in a temporary folder
CLASS_NAMES = ["circle", "square", "triangle", "cross"]
TEMPLATES = ["a small red {}", "a large blue {}", "a small green {}", "a large yellow {}"]
QUERIES = ["a large red circle", "a small blue square", "a green triangle"]
TOP_K = 4  # images shown per query
RESULTS = ""  # a JSON file to write the summary to (tests read it); empty: none

# %% [markdown]
# ## Set-up
# Installs the package when `import vlp_jax` fails (Colab), with jax for the runtime's
# accelerator.

# %%
import os
import shutil
import subprocess
import sys

try:
  import vlp_jax
except ImportError:
  accelerator = ("[tpu]" if os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ
                 else "[gpu]" if shutil.which("nvidia-smi") else "")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  f"vlp_jax{accelerator} @ git+{REPO_URL}"], check=True)
  import vlp_jax

# %% [markdown]
# ## The images

# %%
import glob
import json
import tempfile

if not IMAGES:
  from vlp_jax.data import scenes
  IMAGES = tempfile.mkdtemp(prefix="scenes_")
  for i in range(12):
    with open(os.path.join(IMAGES, f"scene_{i:02d}.png"), "wb") as f:
      f.write(scenes.make_scene(3, i)["png"])
paths = sorted(p for p in glob.glob(os.path.join(IMAGES, "*"))
               if p.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")))
if not paths:
  raise ValueError(f"IMAGES={IMAGES!r} holds no .jpg/.png/.bmp/.gif/.webp file")
print(len(paths), "images in", IMAGES)

# %% [markdown]
# ## The model
# `vlp_jax.load` reads the export's config, tokenizer and parameters and places them on
# all devices; images are resized and centre-cropped as evaluation does.

# %%
model = vlp_jax.load(EXPORT, tokenizer=TOKENIZER or None)
print(model)

# %% [markdown]
# ## Zero-shot classification
# Each class name fills every template's `{}`; an image's score for a class is the mean
# of its similarities to the class's prompts (`ensemble="mean"`; `"max"` takes the best).

# %%
import matplotlib.pyplot as plt
import numpy as np

result = model.zero_shot(paths, CLASS_NAMES, TEMPLATES)
probabilities = np.exp(result.scores - result.scores.max(axis=1, keepdims=True))
probabilities /= probabilities.sum(axis=1, keepdims=True)
seen = model.images(paths)  # uint8, as the model sees them
columns = 6
rows = (len(paths) + columns - 1) // columns
fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
for i, ax in enumerate(axes.flat):
  ax.axis("off")
  if i < len(paths):
    ax.imshow(seen[i])
    ax.set_title(f"{result.labels[i]} {probabilities[i, result.indices[i]]:.0%}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Text-to-image search
# For each query, the `TOP_K` images whose embeddings are closest to the query's.

# %%
found = model.retrieve(QUERIES, paths, top_k=TOP_K, query="text")
k = found.indices.shape[1]
fig, axes = plt.subplots(len(QUERIES), k, figsize=(2.2 * k, 2.5 * len(QUERIES)), squeeze=False)
for q, query in enumerate(QUERIES):
  for j in range(k):
    ax = axes[q, j]
    ax.axis("off")
    ax.imshow(seen[found.indices[q, j]])
    ax.set_title(f"{found.scores[q, j]:.2f}", fontsize=9)
  axes[q, 0].text(-0.1, 0.5, query, transform=axes[q, 0].transAxes, ha="right",
                  va="center", fontsize=10)
plt.tight_layout()
plt.show()

# %%
summary = dict(
    images=[os.path.basename(p) for p in paths], labels=result.labels,
    scores=result.scores.tolist(),
    queries={q: [os.path.basename(paths[i]) for i in found.indices[n]]
             for n, q in enumerate(QUERIES)},
    query_scores=found.scores.tolist())
print(json.dumps(summary))
if RESULTS:
  with open(RESULTS, "w") as f:
    json.dump(summary, f)
