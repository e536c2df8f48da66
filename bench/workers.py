"""Worker processes of the train-step comparisons (compare_open_clip.py, compare_blip.py):
each implementation runs in its own process, so its max RSS is its own, and the driver
times them in turn over stdin/stdout lines prefixed with PREFIX."""
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "@@ "


def reply(**fields):
  print(PREFIX + json.dumps(fields), flush=True)


def max_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mib():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def cpu_seconds():
  t = os.times()
  return t.user + t.system


def serve(step, info):
  """The worker loop: `run N` times N steps, `quit` reports max RSS."""
  reply(ready=True, **info)
  for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
      times = []
      cpu0 = cpu_seconds()
      for _ in range(int(cmd[1])):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
      reply(times=times, cpu=cpu_seconds() - cpu0)
    elif cmd[0] == "quit":
      reply(max_rss_mib=max_rss_mib(), rss_end_mib=rss_now_mib())
      return


def matmul_peak(matmul, n=2048, repeats=10):
  """Best float32 GFLOP/s of an n x n matmul."""
  best = 0.0
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul()
    best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
  return best


class Worker:
  """A worker subprocess (`script` run with `args`) spoken to over stdin/stdout lines."""

  def __init__(self, script, *args):
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(script), *args],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=ROOT)

  def read(self):
    for line in self.proc.stdout:
      if line.startswith(PREFIX):
        return json.loads(line[len(PREFIX):])
    raise RuntimeError(f"worker {self.proc.args[2:]} exited with {self.proc.wait()}")

  def ask(self, command):
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self.read()

  def close(self):
    result = self.ask("quit")
    self.proc.wait()
    return result


def busy_cpu_seconds():
  """CPU seconds all processes of the machine have used (from /proc/stat)."""
  with open("/proc/stat") as f:
    fields = [float(x) for x in f.readline().split()[1:]]
  idle = fields[3] + fields[4]
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(worker, steps):
  busy0, t0 = busy_cpu_seconds(), time.perf_counter()
  result = worker.ask(f"run {steps}")
  wall = time.perf_counter() - t0
  other = max(0.0, busy_cpu_seconds() - busy0 - result["cpu"]) / wall  # cores used by others
  return sum(result["times"]), other


def trainer_step(config, eos_id, batch):
  """(the trainer's jitted step for `config`, a fresh state, the family), as main.py builds
  them, and `batch` (numpy) placed on the devices."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import optimizer, state as state_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  family = families.get_family(config, eos_id=eos_id)
  mesh = mesh_lib.make_mesh(config.mesh)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  step = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  return step, state, family, {k: jnp.asarray(v) for k, v in batch.items()}


def jax_worker(make_step, batch_size, warmup, flops=False):
  """The worker of a vlp_jax train step: imports and the matmul peak first (so rss_imports
  and peak_gflops are the process's own), then `make_step()` -> (step, state, batch, info),
  XLA's FLOPs per sample when `flops` (a scanned body counts once: meaningful unrolled), the
  first (compiling) step, `warmup` more, and `serve`."""
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for name in ("vlp_jax.families", "vlp_jax.train.step"):  # counted in rss_imports
    importlib.import_module(name)
  rss_imports = max_rss_mib()
  a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048), np.float32))
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  peak = matmul_peak(lambda x=a: mm(x).block_until_ready())
  del a

  step, state, batch, info = make_step()
  xla_flops = None
  if flops:
    cost = step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = cost["flops"] / batch_size if cost and "flops" in cost else None
  holder, last = {"state": state}, {}

  def run_step():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)
    last.update(metrics)

  t0 = time.perf_counter()
  run_step()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    run_step()
  serve(run_step, dict(info, peak_gflops=peak, rss_imports_mib=rss_imports,
                       first_step_s=compile_s, xla_flops_per_sample=xla_flops,
                       loss=float(last["loss"])))
