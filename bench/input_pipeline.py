"""Input pipeline speed: images/s per CPU core from JPEG tar shards to model-ready batches.

  python bench/input_pipeline.py [--images=3000] [--size=224] [--cores=N]

Writes webdataset shards of web-like JPEGs (480x360 and 360x480, quality 90, ~60 KB) to a
temporary folder, then times the training pipeline (vlp_jax.data.TrainIterator: tar
parsing, checks, decode + random resized crop + resize + normalise, batching, then
tokenisation on the Python side) and its stages alone, so one sees where time goes.
images_per_s_per_core = images / CPU seconds of this process, which holds on a shared
machine; the wall-clock rate over the cores used is printed beside it. Last line: JSON.
"""
import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vlp_jax import config_lib  # pylint: disable=wrong-import-position
from vlp_jax import data  # pylint: disable=wrong-import-position
from vlp_jax.data import pipeline, preprocess, scenes, webdataset, wds_writer  # pylint: disable=wrong-import-position
from vlp_jax.data.tf_setup import tf  # pylint: disable=wrong-import-position


def _cpu():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def write_shards(folder, count):
  """`count` JPEGs: scenes scaled up, with noise for the texture of real photos."""
  rng = np.random.default_rng(0)
  samples = []
  for i in range(count):
    size = (480, 360) if i % 2 else (360, 480)
    img = Image.fromarray(scenes.make_scene(11, i % 500)["image"]).resize(size, Image.BILINEAR)
    pixels = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    caption = scenes.make_scene(11, i % 500)["caption"]
    samples.append(wds_writer.sample(f"{i:09d}", "x.jpg", buf.getvalue(), caption))
  wds_writer.write_shards(folder, samples, per_shard=500)
  return os.path.join(folder, "*.tar"), np.mean([len(s[1]["jpg"]) for s in samples])


def timed(name, iterator, images, batch):
  """Runs `iterator` for `images` images after one warm-up batch; returns its figures."""
  next(iterator)
  cpu, wall = _cpu(), time.perf_counter()
  for _ in range(images // batch):
    next(iterator)
  cpu, wall = _cpu() - cpu, time.perf_counter() - wall
  done = images // batch * batch
  out = {"stage": name, "images_per_cpu_s": done / cpu, "images_per_s": done / wall}
  print(f"{name:<44} {out['images_per_cpu_s']:8.1f} images/CPU-s {out['images_per_s']:8.1f}"
        f" images/s wall", flush=True)
  return out


def stage(source, config, upto, batch):
  """The pipeline cut after one stage, as a numpy iterator of batches."""
  d = config.data
  ds = source.stream(seed=0, shuffle_buffer=d.shuffle_buffer, position=0, process_index=0,
                     process_count=1)
  n = pipeline.parallelism(d.num_parallel_calls)
  if upto == "read":
    ds = ds.map(lambda r: dict(image=tf.strings.length(r["image"]), caption=r["caption"]))
  else:
    def work(r):
      if upto == "decode":
        return dict(image=tf.shape(preprocess.decode(r["image"])), caption=r["caption"])
      seed = tf.stack([tf.constant(0, tf.int64), r["index"]])
      image = preprocess.decode_random_crop(r["image"], d.crop_min_scale, seed)
      return dict(image=preprocess.resize(image, config.model.image_size), caption=r["caption"])
    ds = ds.map(work, num_parallel_calls=n, deterministic=True)
  return pipeline.iterate(ds.batch(batch))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=3000)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--cores", type=int, default=os.cpu_count())
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    pattern, jpeg_bytes = write_shards(os.path.join(tmp, "shards"), 1000)
    c = config_lib.base_config()
    c.data.train = "wds:" + pattern
    c.data.augment, c.data.crop_min_scale = "crop", 0.4
    c.data.num_parallel_calls, c.data.shuffle_buffer = args.cores, 1000
    c.model.image_size, c.model.context_length = args.size, 77
    c.train.batch_size = args.batch
    tok = data.Tokenizer(data.train_tokenizer(webdataset.WebDataset(pattern).captions(), 256,
                                              os.path.join(tmp, "t.model")), 77)
    source = webdataset.WebDataset(pattern)
    stages = [timed("read tar + shuffle", stage(source, c, "read", args.batch), args.images,
                    args.batch),
              timed("  + decode whole JPEG", stage(source, c, "decode", args.batch),
                    args.images, args.batch),
              timed("  or decode crop window + resize", stage(source, c, "crop", args.batch),
                    args.images, args.batch)]
    full = timed("TrainIterator: all + checks, normalise, tokenise",
                 data.TrainIterator(c, tok), args.images, args.batch)
  per_core = full["images_per_cpu_s"]
  print(json.dumps({"images_per_s_per_core": round(per_core, 1),
                    "images_per_s_wall": round(full["images_per_s"], 1),
                    "wall_per_core": round(full["images_per_s"] / args.cores, 1),
                    "cores": args.cores, "image_size": args.size, "jpeg_kb": round(jpeg_bytes / 1e3, 1),
                    "stages_images_per_cpu_s": {s["stage"].removeprefix("+ ").removeprefix("or ").strip(): round(s["images_per_cpu_s"], 1)
                                                for s in stages}}))


if __name__ == "__main__":
  main()
