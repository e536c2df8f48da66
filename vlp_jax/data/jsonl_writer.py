"""Writes image-caption pairs as a `jsonl:` folder, the format any new data set can be put in."""
import json
import os


def write_jsonl_folder(folder, examples):
  """Writes `examples` of (file name, encoded image bytes, caption) under folder/images/.

  Returns the folder; `get_source('jsonl:' + folder)` reads it back in the same order.
  """
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as index:
    for name, image_bytes, caption in examples:
      rel = os.path.join("images", name)
      with open(os.path.join(folder, rel), "wb") as f:
        f.write(image_bytes)
      index.write(json.dumps({"image": rel, "caption": caption}) + "\n")
  return folder
