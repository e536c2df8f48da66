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
# # Pretrained weights: import a released CLIP, classify zero-shot, fine-tune
#
# Downloads OpenAI's CLIP ViT-B/32 from the Hugging Face hub (about 600 MB), loads it with
# `vlp_jax.load("hf:DIR", tokenizer="clip_bpe:DIR")` (weights converted on load, OpenAI's
# BPE tokenizer), classifies held-out shapes scenes by colour, shape and size with prompts,
# then fine-tunes it on the shapes captions with `model.init_from=hf:DIR` and classifies
# again. A GPU or TPU runtime fine-tunes in minutes; a CPU is slow at 224px.

# %% tags=["parameters"]
# The repository to install from when vlp_jax is not importable (Colab). Placeholder:
# replace OWNER with the GitHub owner of the repository you opened this notebook from.
REPO_URL = "https://github.com/OWNER/vlp_jax"
# A Hugging Face hub CLIP (e.g. openai/clip-vit-base-patch32), a local folder of one, or
# "random-tiny": an offline stand-in (below) that goes through the same import as a real one.
CHECKPOINT = "openai/clip-vit-base-patch32"
STEPS = 100  # fine-tuning steps
BATCH_SIZE = 64
LR = 1e-5  # fine-tuning: small against pretraining's 5e-4
MAX_EXAMPLES = 256  # held-out scenes classified before and after
SCENES = 0  # 0: the built-in shapes data; N: N generated scenes in a jsonl folder (quick)
WORKDIR = "workdirs/pretrained_weights"  # the fine-tuning run
RESULTS = ""  # a JSON file to write the summary to (tests read it); empty: none

# %% [markdown]
# ## Set-up
# Finds the repository (`main.py` is not part of the installed package): the checkout this
# notebook lives in, or a clone of `REPO_URL`; installs the package when `import vlp_jax`
# fails, with jax for the runtime's accelerator.

# %%
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
# ## The checkpoint
# A hub CLIP comes as a Hugging Face folder: config.json, the weights (safetensors where
# the repository has them) and the tokenizer files. `import_hf_clip.config_from_hf` reads
# the model fields the checkpoint fixes (sizes, activation, pooling) from config.json.
#
# **`CHECKPOINT="random-tiny"` is a stand-in for offline runs (the tests use it)**: a
# randomly initialised tiny CLIP written in open_clip's format (safetensors with OpenAI's
# key names, by `export_open_clip.write`) and a tiny BPE merges file in open_clip's format
# that spells the shapes vocabulary. It is then read exactly as a real open_clip file
# would be: `vlp_jax.load("open_clip:FILE", tokenizer="clip_bpe:MERGES")`, whose fields
# `import_open_clip.config_from_state_dict` reads from the tensors. Its zero-shot accuracy
# is chance, and a few steps of fine-tuning do not change that.

# %%
import gzip
import json


def random_tiny_checkpoint(folder):
  """(open_clip:FILE, clip_bpe:MERGES) of a random CLIP of width 128 (2 heads of 64, as
  OpenAI's) on 32px images, with a merges file whose pieces are the shapes words."""
  import flax.linen as nn
  import jax.numpy as jnp
  from vlp_jax import config_lib, families
  from vlp_jax.data import clip_bpe, scenes
  from vlp_jax.models import export_open_clip
  weights = os.path.join(folder, export_open_clip.WEIGHTS_FILE)
  merges_file = os.path.join(folder, "bpe_shapes.txt.gz")
  if os.path.exists(weights):
    return f"open_clip:{weights}", f"clip_bpe:{merges_file}"
  os.makedirs(folder, exist_ok=True)
  words = sorted({w for i in range(500) for w in scenes.make_scene(0, i)["caption"]
                  .replace(",", " ").split()})
  merges = []
  for word in words:  # "red": "e d</w>" makes "ed</w>", then "r ed</w>" makes "red</w>"
    tail = word[-1] + "</w>"
    for char in reversed(word[:-1]):
      merge = f"{char} {tail}"
      if merge not in merges:
        merges.append(merge)
      tail = char + tail
  with gzip.open(merges_file, "wt", encoding="utf-8") as f:
    f.write("\n".join(["#version: 0.2"] + merges))
  tokenizer = clip_bpe.ClipBpeTokenizer(merges_file, context_length=32)
  c = config_lib.base_config()
  c.model.update(dict(
      name="clip", image_size=32, patch_size=8, vision_width=128, vision_depth=1,
      vision_heads=2, text_width=128, text_depth=1, text_heads=2, embed_dim=64,
      vocab_size=tokenizer.vocab_size, context_length=32, activation="quick_gelu",
      text_pool="eos", scan=False))
  family = families.get_family(c, eos_id=tokenizer.eos_id)
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), family.example_batch(1))
  params = nn.meta.unbox(jax.jit(family.init)(jax.random.PRNGKey(0), batch))
  tmp = folder + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  export_open_clip.write(tmp, params, c.model, eos_id=tokenizer.eos_id)
  shutil.move(os.path.join(tmp, export_open_clip.WEIGHTS_FILE), weights)
  shutil.rmtree(tmp)
  return f"open_clip:{weights}", f"clip_bpe:{merges_file}"


def hub_checkpoint(repo_id):
  """(hf:DIR, clip_bpe:DIR) of a CLIP on the Hugging Face hub, downloaded once."""
  try:
    import huggingface_hub
  except ImportError:  # Colab has it; elsewhere: pip install huggingface_hub
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "huggingface_hub"], check=True)
    import huggingface_hub
  files = huggingface_hub.list_repo_files(repo_id)
  weights = (["model.safetensors"] if "model.safetensors" in files
             else ["model.safetensors.index.json", "model-*.safetensors"]
             if "model.safetensors.index.json" in files else ["pytorch_model.bin"])
  folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=[
      "config.json", "tokenizer.json", "vocab.json", "merges.txt", *weights])
  return f"hf:{folder}", f"clip_bpe:{folder}"


if CHECKPOINT == "random-tiny":
  SOURCE, TOKENIZER = random_tiny_checkpoint(WORKDIR.rstrip("/") + "_random_tiny")
elif os.path.isdir(CHECKPOINT):  # a Hugging Face CLIP folder already on disk
  SOURCE, TOKENIZER = f"hf:{CHECKPOINT}", f"clip_bpe:{CHECKPOINT}"
else:
  SOURCE, TOKENIZER = hub_checkpoint(CHECKPOINT)
print(SOURCE, TOKENIZER)

# %%
from vlp_jax.models import import_hf_clip, import_open_clip

kind, path = SOURCE.split(":", 1)
if kind == "hf":
  fields = import_hf_clip.config_from_hf(path)
else:
  fields = import_open_clip.config_from_state_dict(import_open_clip.load_state_dict(path))
print(fields)

# %% [markdown]
# ## Zero-shot, as imported
# The held-out scenes' zero-shot tasks: each single-shape scene's colour, shape and size,
# by prompt ensembles ("a small {} circle", ...). Scenes with several shapes are unlabelled.

# %%
import numpy as np


def zero_shot_accuracy(model, ev):
  """Task name -> accuracy over the labelled scenes of `ev`."""
  accuracy = {}
  for name, task in ev.zeroshot_tasks.items():
    result = model.zero_shot(ev.images, task.classnames, task.templates, task.ensemble)
    labelled = ev.labels[name] >= 0
    accuracy[name] = float(np.mean(result.indices[labelled] == ev.labels[name][labelled]))
  return accuracy


pretrained = vlp_jax.load(SOURCE, tokenizer=TOKENIZER)
print(pretrained)
ev = pretrained.eval_set("builtin:shapes:test", MAX_EXAMPLES)
before = zero_shot_accuracy(pretrained, ev)
print("imported:", before)

# %% [markdown]
# ## Fine-tune
# The run starts from the checkpoint (`model.init_from`), with the model fields it fixes
# and its tokenizer, as on the command line:
# ```
# python main.py --config=configs/clip_tiny.py --workdir=WORKDIR \
#   --config.model.init_from=hf:DIR --config.data.tokenizer=clip_bpe:DIR \
#   --config.model.image_size=224 ... (each field config_from_hf gives)
# ```

# %%
from vlp_jax import config_lib

config = config_lib.base_config()
config.model.update(dict(fields))
config.model.init_from = SOURCE
config.data.tokenizer = TOKENIZER
if SCENES:  # a jsonl folder of generated scenes: no TFDS preparation
  from vlp_jax.data import jsonl_writer, scenes
  folder = os.path.join(WORKDIR, "scenes")
  jsonl_writer.write_jsonl_folder(folder, [
      (f"{i:05d}.png", s["png"], s["caption"]) for i, s in
      ((i, scenes.make_scene(7, i)) for i in range(SCENES))])
  config.data.train, config.data.eval = f"jsonl:{folder}:train", f"jsonl:{folder}:test"
  config.data.holdout_percent = 20
config.train.steps = STEPS
config.train.batch_size = BATCH_SIZE
config.train.log_every = max(1, STEPS // 20)
config.train.checkpoint_every = STEPS
config.eval.max_examples = MAX_EXAMPLES
config.optim.lr = LR
config.optim.warmup_steps = max(1, STEPS // 10)
final = main.run(config, "train", WORKDIR)
print(json.dumps(main.strict_json(final), sort_keys=True)[:1500])

# %%
import matplotlib.pyplot as plt

tuned = vlp_jax.load(WORKDIR)
after = zero_shot_accuracy(tuned, ev)
print("fine-tuned:", after)
with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
  rows = [r for r in map(json.loads, f) if "loss" in r]
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
left.set_xlabel("step")
left.set_ylabel("contrastive loss")
tasks = sorted(before)
x = np.arange(len(tasks))
right.bar(x - 0.2, [before[t] for t in tasks], 0.4, label="imported")
right.bar(x + 0.2, [after[t] for t in tasks], 0.4, label=f"fine-tuned {STEPS} steps")
right.set_xticks(x, tasks)
right.set_ylabel("zero-shot accuracy")
right.legend()
plt.tight_layout()
plt.show()

# %%
summary = dict(source=SOURCE, tokenizer=TOKENIZER, model=dict(fields), zero_shot_before=before,
               zero_shot_after=after, logged_steps=[r["step"] for r in rows],
               final_loss=rows[-1]["loss"])
print(json.dumps(main.strict_json(summary)))
if RESULTS:
  with open(RESULTS, "w") as f:
    json.dump(main.strict_json(summary), f)
