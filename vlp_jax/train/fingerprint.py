"""The config fields a checkpoint depends on, so a resume cannot silently change the model.

A checkpoint's arrays mean something only together with the fields that say what each
array computes (the activation, causal masking, pooling, the layer layout) and the fields
that decide which records the saved input position points into. Those fields are stored
with every checkpoint and compared on restore (train/checkpoint.py). Everything else may
change between runs: speed and memory settings, the optimizer, schedule and loss weights
(a longer or retuned run is the usual reason to resume), evaluation, logging and the mesh.

Left out of `model`, with the reason:
  dtype, remat, remat_policy: compute dtype and rematerialisation; parameters are always
    float32 and hold the same values either way.
  logit_scale_init, logit_bias_init, init_from, init_from_map: used only to initialise;
    a restored run never reads them (a run started from other runs is read, captioned or
    resumed without naming them again).
  logit_scale_max: a clamp applied after each update, a training rule like optim.clip_norm.
`model.scan` is kept: it stacks each tower's blocks into one array per weight, a
different parameter layout. Fields the chosen family ignores (CoCa's for CLIP) are kept
too: a needless refusal costs a flag, a missed change a silently different model.

From `data`, the fields that pick or order the training records: train, tokenizer (token
ids mean nothing under another vocabulary), holdout_percent (which jsonl records are the
train split), shuffle_buffer, augment, crop_min_scale, shard_cycle, image_key and text_key.
Left out: data_dir (where the data lives, not what it is), eval fields, prefetch and
num_parallel_calls (the pipeline is deterministic), allow_outside_paths (a permission).
`seed` shuffles the data and seeds the train RNG. `train.batch_size` is kept: a host's
saved input position counts its rows of the global batches, so it points to other records
under another batch size (train_iterator.global_positions). `train.accum_steps` is left
out: it splits each global batch for memory and the records stay the same.
From `vqa` (model.name='vqa'), what the fine-tuned model computes: the wrapped family, the
answer length and the blind baseline; vqa.candidates only picks how evaluation answers.
"""

import json

MODEL_EXCLUDED = ("dtype", "remat", "remat_policy", "logit_scale_init", "logit_bias_init",
                  "logit_scale_max", "init_from", "init_from_map")
DATA_FIELDS = ("train", "tokenizer", "holdout_percent", "shuffle_buffer", "augment",
               "crop_min_scale", "shard_cycle", "image_key", "text_key")
VQA_FIELDS = ("family", "answer_length", "blind")


def fingerprint(config):
  """{"model.activation": "gelu", ..., "seed": 0}: flat, JSON-safe, sorted by name."""
  fields = {}
  for k, v in config.model.items():
    if k in MODEL_EXCLUDED:
      continue
    if hasattr(v, "items"):  # a group of fields (model.lm)
      fields.update({f"model.{k}.{name}": value for name, value in v.items()})
    else:
      fields[f"model.{k}"] = v
  fields.update({f"data.{k}": config.data[k] for k in DATA_FIELDS})
  fields.update({f"vqa.{k}": config.vqa[k] for k in VQA_FIELDS})
  fields["seed"] = config.seed
  fields["train.batch_size"] = config.train.batch_size
  # Through JSON so a fresh value compares equal to one read back from a checkpoint.
  return json.loads(json.dumps(dict(sorted(fields.items()))))


def differences(saved, current):
  """Names whose values differ, in order; a name the checkpoint lacks (written before the
  field existed) is not a difference."""
  return [k for k in sorted(current) if k in saved and saved[k] != current[k]]
