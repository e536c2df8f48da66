"""Writes image-caption pairs as webdataset tar shards in img2dataset's layout.

  python -m vlp_jax.data.wds_writer --jsonl=FOLDER[:train|:test] --out=DIR --per_shard=1000

Each sample is KEY.jpg/.png/.webp (the image bytes as they are), KEY.txt (the caption) and
KEY.json ({"key", "caption"}), written like webdataset's TarWriter (PAX format, float
mtimes); shards are DIR/00000.tar, DIR/00001.tar, ...
"""
import argparse
import io
import json
import os
import tarfile
import time


def write_shards(folder, samples, per_shard):
  """Writes `samples` of (key, {extension: bytes}) into shards of `per_shard`; returns paths."""
  os.makedirs(folder, exist_ok=True)
  paths, archive = [], None
  for i, (key, members) in enumerate(samples):
    if i % per_shard == 0:
      if archive is not None:
        archive.close()
      paths.append(os.path.join(folder, f"{len(paths):05d}.tar"))
      archive = tarfile.open(paths[-1], "w", format=tarfile.PAX_FORMAT)
    for ext, payload in members.items():
      info = tarfile.TarInfo(f"{key}.{ext}")
      info.size, info.mtime = len(payload), time.time()
      archive.addfile(info, io.BytesIO(payload))
  if archive is not None:
    archive.close()
  return paths


def sample(key, image_name, image_bytes, caption):
  """img2dataset's members for one pair: the image, KEY.txt and KEY.json."""
  ext = os.path.splitext(image_name)[1].lstrip(".").lower() or "jpg"
  meta = json.dumps({"key": key, "caption": caption}, indent=4).encode()
  return key, {ext: image_bytes, "txt": caption.encode("utf-8"), "json": meta}


def from_jsonl(spec, out, per_shard):
  """Shards holding the records of a jsonl: spec, in its order."""
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.get_source(spec)
  samples = []
  for i, (key, path, raw) in enumerate(zip(source.keys, source.paths, source.raw_captions)):
    with open(path, "rb") as f:
      samples.append(sample(f"{i:09d}", key, f.read(), raw.decode("utf-8", "replace")))
  return write_shards(out, samples, per_shard)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--jsonl", required=True, help="jsonl:PATH[:split] or PATH")
  parser.add_argument("--out", required=True, help="folder for the shards")
  parser.add_argument("--per_shard", type=int, default=1000)
  args = parser.parse_args(argv)
  spec = args.jsonl if args.jsonl.startswith("jsonl:") else "jsonl:" + args.jsonl
  paths = from_jsonl(spec, args.out, args.per_shard)
  print(f"Wrote {len(paths)} shards to {args.out}")


if __name__ == "__main__":
  main()
