"""Result files of the long experiments (caption_chain.py, capfilt_experiment.py): read,
written strict (NaN and infinities as null, so every file stays valid JSON)."""
import json
import math


def strict(value):
  """`value` with every non-finite float replaced by None, through dicts and lists."""
  if isinstance(value, dict):
    return {k: strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def read(path):
  """The file's value, or None when it is missing or not JSON (a stage to run again)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write(path, value):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(strict(value), f, indent=2, sort_keys=True)
