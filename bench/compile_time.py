"""How long users wait for their first train step, with the layer stacks unrolled or scanned.

  python bench/compile_time.py [--configs=clip_tiny,siglip_tiny,coca_tiny,clip_b16,coca_base]
      [--scan=False,True] [--repeats=3] [--big_repeats=1] [--big_batch=256] [--timeout=3600]

Every measurement runs in a fresh Python process (nothing compiled carries over; the
persistent compilation cache is switched off in the children, and the worker checks that
jax_compilation_cache_dir is unset). model.scan is set by --config.model.scan; model.remat
stays as the config has it. Runs are interleaved (repeat, config, scan) so that load from
other jobs spreads over all rows. Columns:
  first step s  tiny configs only: from starting `python main.py --config.train.steps=1
                --config.data.eval=` in a fresh workdir to the end of step 1, read as the
                time metrics.jsonl is written (right after the step's metrics reach the
                host). Everything a user waits for: imports, tokenizer training, the data
                pipeline, state creation, compile, the step itself.
  import s      the worker's imports (those of the trainer: jax, flax, TF, vlp_jax), from
                process start.
  init s        creating the sharded train state (jit of init, executed); tiny only.
  lower s       tracing and lowering the train step to StableHLO.
  compile s     XLA compilation of the lowered train step (wall clock; compile CPU s is the
                process CPU time meanwhile, steadier on a shared machine).
The worker builds the trainer's pieces as vlp_jax/train/loop.py does (family, optimizer,
mesh, abstract state, make_train_step) and lowers the trainer's own jax.jit (the step's
`.lower`) on abstract (ShapeDtypeStruct) state and batch, so big configs are never
allocated; they compile at global batch --big_batch (0: the config's own, 32,768) on this
machine's devices. Rows show the median [min-max] over --repeats (tiny) or --big_repeats
(big); the last line is one JSON object of medians,
`<config>/scan=<bool>/<first_step_s|lower_s|compile_s|compile_cpu_s>`.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (config argument of main.py, tiny: train it for one step; big: compile only)
CONFIGS = {
    "clip_tiny": ("configs/clip_tiny.py", "tiny"),
    "siglip_tiny": ("configs/siglip_tiny.py", "tiny"),
    "coca_tiny": ("configs/coca_base.py:variant=tiny", "tiny"),
    "clip_b16": ("configs/clip_b16.py", "big"),
    "siglip_b16": ("configs/siglip_b16.py", "big"),
    "coca_base": ("configs/coca_base.py", "big"),
}
DEFAULT_CONFIGS = "clip_tiny,siglip_tiny,coca_tiny,clip_b16,coca_base"
WORKER_FLAG = "--_worker"


def _cpu():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def worker(argv):
  """In a fresh process: the phases up to the first train step, printed as one JSON line.

  argv: [--t0=START] [--execute] --config=PATH[:ARG] [--config.a.b=v ...] (as main.py).
  """
  t0 = float(next(a for a in argv if a.startswith("--t0=")).split("=", 1)[1])
  execute = "--execute" in argv
  # The trainer's imports, so that `import s` is what main.py pays.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from vlp_jax import config_lib, families  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import loop, optimizer, state as state_lib  # pylint: disable=g-import-not-at-top,unused-import
  from vlp_jax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  out = {"import_s": time.time() - t0}

  if jax.config.jax_compilation_cache_dir or jax.config.jax_enable_compilation_cache:
    raise SystemExit(f"persistent compilation cache is on "
                     f"(dir={jax.config.jax_compilation_cache_dir!r}); the bench needs it off")
  config_flags.DEFINE_config_file("config", None, "Config file, optionally path:arg.")
  flags.FLAGS([sys.argv[0]] + [a for a in argv if a.startswith("--config")])
  config = flags.FLAGS.config

  start = time.time()
  config_lib.validate(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  family = families.get_family(config)  # eos_id only matters for values, not for compiling
  tx, lr_fn = optimizer.make(config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  shardings = sharding.named(mesh, specs)
  out["setup_s"] = time.time() - start
  if execute:
    start = time.time()
    state, _ = state_lib.create(family, tx, config.seed, mesh)
    jax.block_until_ready(state)
    out["init_s"] = time.time() - start

  batch_size = config.train.batch_size
  abstract_batch = family.example_batch(batch_size)
  step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  start = time.time()
  lowered = step_fn.lower(abstract, abstract_batch)
  out["lower_s"] = time.time() - start
  start, cpu = time.time(), _cpu()
  compiled = lowered.compile()
  out["compile_s"] = time.time() - start
  out["compile_cpu_s"] = _cpu() - cpu
  if execute:
    start = time.time()
    batch = {k: jax.device_put(np.zeros(v.shape, v.dtype), sharding.batch_sharding(mesh))
             for k, v in abstract_batch.items()}
    jax.block_until_ready(compiled(state, batch))
    out["execute_s"] = time.time() - start
    out["first_step_no_data_s"] = time.time() - t0
  out.update(scan=bool(config.model.scan), remat=bool(config.model.remat), batch=batch_size,
             devices=jax.device_count())
  print(json.dumps(out), flush=True)


def _env():
  env = dict(os.environ)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  return env


def _run(cmd, timeout):
  """(returncode, stdout, stderr tail, start time) of cmd in a fresh process."""
  t0 = time.time()
  cmd = [a.replace("{t0}", repr(t0)) for a in cmd]
  try:
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, "", f"timed out after {timeout}s", t0
  return p.returncode, p.stdout, p.stderr[-3000:], t0


def measure_compile(spec, scan, batch, execute, timeout):
  cmd = [sys.executable, os.path.abspath(__file__), WORKER_FLAG, "--t0={t0}",
         f"--config={spec}", f"--config.model.scan={scan}"]
  if batch:
    cmd.append(f"--config.train.batch_size={batch}")
  if execute:
    cmd.append("--execute")
  rc, stdout, stderr, _ = _run(cmd, timeout)
  if rc != 0:
    raise RuntimeError(f"worker failed ({rc}): {stderr}")
  return json.loads(stdout.strip().splitlines()[-1])


def measure_first_step(spec, scan, timeout):
  """Seconds from launching main.py for one step to metrics.jsonl appearing; and to exit."""
  workdir = tempfile.mkdtemp(prefix="compile_time_")
  try:
    cmd = [sys.executable, "main.py", f"--config={spec}", f"--workdir={workdir}",
           "--config.train.steps=1", "--config.data.eval=", f"--config.model.scan={scan}"]
    rc, _, stderr, t0 = _run(cmd, timeout)
    exited = time.time() - t0
    if rc != 0:
      raise RuntimeError(f"main.py failed ({rc}): {stderr}")
    written = os.stat(os.path.join(workdir, "metrics.jsonl")).st_mtime_ns / 1e9
    return {"first_step_s": written - t0, "exit_s": exited}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def _summary(values):
  if not values:
    return "-", None
  med = statistics.median(values)
  if len(values) == 1:
    return f"{med:.1f}", med
  return f"{med:.1f} [{min(values):.1f}-{max(values):.1f}]", med


def main():
  if WORKER_FLAG in sys.argv:
    return worker([a for a in sys.argv[1:] if a != WORKER_FLAG])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"of {sorted(CONFIGS)}")
  parser.add_argument("--scan", default="False,True")
  parser.add_argument("--repeats", type=int, default=3, help="per tiny config and scan")
  parser.add_argument("--big_repeats", type=int, default=1, help="per big config and scan")
  parser.add_argument("--big_batch", type=int, default=256,
                      help="global batch the big configs compile at; 0: the config's own")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per process")
  args = parser.parse_args()
  names = args.configs.split(",")
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    parser.error(f"unknown --configs {unknown}; known: {sorted(CONFIGS)}")
  scans = [s.strip().lower() == "true" for s in args.scan.split(",")]

  runs = {(n, s): [] for n in names for s in scans}
  for rep in range(max(args.repeats, args.big_repeats)):
    for name in names:
      spec, kind = CONFIGS[name]
      if rep >= (args.repeats if kind == "tiny" else args.big_repeats):
        continue
      for scan in scans:
        label = f"{name} scan={scan} #{rep + 1}"
        try:
          if kind == "tiny":
            r = measure_compile(spec, scan, 0, True, args.timeout)
            r.update(measure_first_step(spec, scan, args.timeout))
          else:
            r = measure_compile(spec, scan, args.big_batch, False, args.timeout)
        except RuntimeError as e:
          print(f"{label}: {e}", file=sys.stderr, flush=True)
          continue
        runs[(name, scan)].append(r)
        shown = {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
        print(f"{label}: {shown}", file=sys.stderr, flush=True)

  devices = next((r[0]["devices"] for r in runs.values() if r), "?")
  print(f"{devices} {'device' if devices == 1 else 'devices'}, {os.cpu_count()} CPU cores; "
        "median [min-max] over runs")
  columns = ("first step s", "import s", "init s", "lower s", "compile s", "compile CPU s")
  print(f"{'config':<12} {'scan':<5} {'remat':<5} {'batch':>6}" +
        "".join(f" {c:>17}" for c in columns))
  results = {}
  for (name, scan), rs in runs.items():
    if not rs:
      print(f"{name:<12} {str(scan):<5} failed")
      continue
    cells = {}
    for key in ("first_step_s", "import_s", "init_s", "lower_s", "compile_s", "compile_cpu_s"):
      cells[key], med = _summary([r[key] for r in rs if key in r])
      if med is not None and key in ("first_step_s", "lower_s", "compile_s", "compile_cpu_s"):
        results[f"{name}/scan={scan}/{key}"] = round(med, 2)
    print(f"{name:<12} {str(scan):<5} {str(rs[0]['remat']):<5} {rs[0]['batch']:>6}" +
          "".join(f" {cell:>17}" for cell in cells.values()), flush=True)
  print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
  main()
