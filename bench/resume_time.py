"""Time to the first step of a resumed run, with and without the persistent compile cache.

  python bench/resume_time.py [--configs=clip_tiny,coca_tiny] [--repeats=3]

A preempted run restarts from its workdir; without a compilation cache it pays the
train step's compile again before its first step. For each config this trains 2 steps
(checkpoint at 2, cache in WORKDIR/compile_cache as by default), then times, in fresh
processes, `main.py` resuming for one more step from a copy of that workdir: with the
cache (the default) and with `--config.train.compile_cache=none`, interleaved, --repeats
times each. "first step s" is from process start to the resumed step's line in
metrics.jsonl (imports, tokenizer and data set-up, restore, compile or cache load, the
step). Rows show the median [min-max]; the last line is one JSON object of medians.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"clip_tiny": "configs/clip_tiny.py", "siglip_tiny": "configs/siglip_tiny.py",
           "coca_tiny": "configs/coca_base.py:variant=tiny"}
COMMON = ["--config.data.eval=", "--config.train.log_every=1",
          "--config.train.checkpoint_every=2"]


def _env():
  env = dict(os.environ)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  return env


def _last_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(line).get("step", 0) for line in f if line.strip().endswith("}")]
  return max(steps, default=0)


def _run(config, workdir, steps, extra=(), timeout=900):
  """Seconds from start until metrics.jsonl logs step `steps`; the process then finishes."""
  cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
         f"--config.train.steps={steps}", *COMMON, *extra]
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  seen = None
  while proc.poll() is None and time.time() - start < timeout:
    if seen is None and _last_step(workdir) >= steps:
      seen = time.time() - start
    time.sleep(0.05)
  _, err = proc.communicate(timeout=timeout)
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
  return seen if seen is not None else time.time() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="clip_tiny,coca_tiny")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  names = args.configs.split(",")
  root = tempfile.mkdtemp(prefix="resume_time_")
  times = {(n, cache): [] for n in names for cache in (True, False)}
  try:
    for name in names:
      _run(CONFIGS[name], os.path.join(root, name, "base"), 2)
    for repeat in range(args.repeats):
      for name in names:
        for cache in (True, False):
          workdir = os.path.join(root, name, f"r{repeat}_{cache}")
          shutil.copytree(os.path.join(root, name, "base"), workdir)
          extra = [] if cache else ["--config.train.compile_cache=none"]
          times[(name, cache)].append(_run(CONFIGS[name], workdir, 3, extra))
          shutil.rmtree(workdir)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f"{'config':<12} {'cache':<6} {'first step s (resumed)':<24}")
  summary = {}
  for (name, cache), values in times.items():
    med = statistics.median(values)
    print(f"{name:<12} {'on' if cache else 'off':<6} "
          f"{med:6.1f} [{min(values):.1f}-{max(values):.1f}]")
    summary[f"{name}/cache={'on' if cache else 'off'}/first_step_s"] = round(med, 2)
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  main()
