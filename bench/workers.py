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
