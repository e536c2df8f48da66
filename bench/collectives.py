"""Cross-device collectives of one compiled train step, counted from its optimised HLO.

  python bench/collectives.py --config=configs/coca_base.py:variant=tiny --devices=8 \
      --mesh=fsdp=4,model=2 [--batch=64] [--config.model.vocab_size=4096 ...]

Compiles the trainer's own step (train/step.py make_train_step, lowered on abstract state
and batch, nothing allocated) for a mesh of --devices simulated CPU devices and prints, per
collective kind (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute),
the ops and bytes per step outside loops and inside each while loop, the loop named by the
source line that made it and its trip count multiplied in where XLA knows it. Bytes are
one device's: the larger of an op's result and operands, i.e. the group's whole array for an
all-gather (its result) and a reduce-scatter (its operand); a loop without collectives
gets a "(none)" row. XLA:CPU runs bfloat16 collectives in float32, so a bfloat16 model's
figures here can be up to twice a TPU's. Ops inside a conditional branch (the
vocabulary loss skips chunks of padding) are counted as if always taken: an upper bound.
Last line: one JSON object. The parser (`parse`, `collectives`) is shared with
tests/test_hlo.py.
"""
import collections
import json
import math
import os
import re
import sys

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute", "collective-broadcast")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLS = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation|"
                    r"branch_computations|called_computations|async_computation)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")

Instr = collections.namedtuple("Instr", "name type opcode operands calls attrs")


def shape_bytes(type_text):
  """Bytes of every array in an HLO type (a tuple's elements summed)."""
  return sum(math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES.get(dt, 4)
             for dt, dims in _ARRAY.findall(type_text) if dt in DTYPE_BYTES)


def shape_elements(type_text):
  """Elements of the largest array in an HLO type."""
  return max((math.prod(int(d) for d in dims.split(",") if d)
              for dt, dims in _ARRAY.findall(type_text) if dt in DTYPE_BYTES), default=0)


def _split_type(rest):
  """'(f32[2], s32[]) opcode(...)' -> ('(f32[2], s32[])', 'opcode(...)')."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  head, _, tail = rest.partition(" ")
  return head, tail


def _parse_instr(line):
  m = _INSTR.match(line)
  if not m:
    return None
  name, rest = m.groups()
  type_text, rest = _split_type(rest)
  m = re.match(r"([\w\-]+)\((.*)$", rest)
  if not m:
    return None
  opcode, rest = m.groups()
  depth, end = 1, len(rest)
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      end = i
      break
  operands = re.findall(r"%([\w.\-]+)", rest[:end])
  attrs = rest[end + 1:]
  calls = []
  for group in _CALLS.findall(attrs):
    calls += re.findall(r"%?([\w.\-]+)", group.strip("{}"))
  return Instr(name, type_text, opcode, operands, calls, attrs)


class Module:
  """The computations of an HLO module's text, and its stack-frame table."""

  def __init__(self, text):
    self.computations, self.entry = {}, None
    self.files, self.functions, self.locations, self.frames = {}, {}, {}, {}
    section, current = None, None
    for line in text.splitlines():
      stripped = line.strip()
      if current is not None:
        if stripped == "}":
          current = None
        else:
          instr = _parse_instr(line)
          if instr:
            self.computations[current].append(instr)
        continue
      m = _HEADER.match(line)
      if m:
        current = m.group(2)
        self.computations[current] = []
        if m.group(1):
          self.entry = current
        continue
      if stripped in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
        section = stripped
        continue
      m = re.match(r"^(\d+)\s+(.*)$", stripped)
      if m and section:
        key, value = int(m.group(1)), m.group(2)
        if section == "FileNames":
          self.files[key] = value.strip('"')
        elif section == "FunctionNames":
          self.functions[key] = value.strip('"')
        elif section == "FileLocations":
          fields = dict(re.findall(r"(\w+)=(\d+)", value))
          self.locations[key] = (int(fields.get("file_name_id", 0)),
                                 int(fields.get("function_name_id", 0)),
                                 int(fields.get("line", 0)))
        else:
          fields = dict(re.findall(r"(\w+)=(\d+)", value))
          self.frames[key] = int(fields.get("file_location_id", 0))
    if self.entry is None:
      raise ValueError("no ENTRY computation in the HLO text")
    self.types = {c: {i.name: i.type for i in instrs} for c, instrs in self.computations.items()}

  def source(self, instr):
    """'path:line (function)' of the innermost frame that made `instr`, or ''."""
    m = _FRAME_ID.search(instr.attrs)
    if not m or int(m.group(1)) not in self.frames:
      return ""
    file_id, function_id, line = self.locations.get(self.frames[int(m.group(1))], (0, 0, 0))
    path = self.files.get(file_id, "?")
    if "/vlp_jax/" in path:
      path = "vlp_jax/" + path.rsplit("/vlp_jax/", 1)[1]
    elif "site-packages/" in path:
      path = path.rsplit("site-packages/", 1)[1]
    return f"{path}:{line} ({self.functions.get(function_id, '?')})"

  def op_bytes(self, computation, instr):
    operands = sum(shape_bytes(self.types[computation].get(o, "")) for o in instr.operands)
    return max(shape_bytes(instr.type), operands)

  def op_elements(self, computation, instr):
    return max([shape_elements(instr.type)] +
               [shape_elements(self.types[computation].get(o, "")) for o in instr.operands])


def group_size(attrs):
  """Devices per replica group of a collective's attributes, or 0 if unreadable."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if m:
    sizes = dict((a, int(n)) for a, n in re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    return math.prod(sizes.get(a, 1) for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"source_target_pairs=\{([^=]*)\}", attrs)
  return 2 if m else 0


Collective = collections.namedtuple(
    "Collective", "kind computation name bytes elements group loops executions")


def collectives(module):
  """Every collective reachable from ENTRY, with the while loops around it (outermost
  first, each (source, trip count or None)) and its executions per step (unknown trip
  counts count once)."""
  out = []

  def visit(computation, loops, seen):
    if computation in seen or computation not in module.computations:
      return
    seen = seen | {computation}
    for instr in module.computations[computation]:
      kind = instr.opcode[:-len("-start")] if instr.opcode.endswith("-start") else instr.opcode
      if kind in COLLECTIVES:
        executions = math.prod(t or 1 for _, t in loops)
        out.append(Collective(kind, computation, instr.name, module.op_bytes(computation, instr),
                              module.op_elements(computation, instr), group_size(instr.attrs),
                              tuple(loops), executions))
      if instr.opcode == "while":
        m = _TRIP.search(instr.attrs)
        inner = loops + [(module.source(instr), int(m.group(1)) if m else None)]
        for called in instr.calls:
          visit(called, inner, seen)
      else:
        for called in instr.calls:
          visit(called, loops, seen)

  visit(module.entry, [], frozenset())
  return out


def while_loops(module):
  """(source, trip count or None) of every while loop reachable from ENTRY."""
  out = []

  def visit(computation, seen):
    if computation in seen or computation not in module.computations:
      return
    for instr in module.computations[computation]:
      if instr.opcode == "while":
        m = _TRIP.search(instr.attrs)
        out.append((module.source(instr), int(m.group(1)) if m else None))
      for called in instr.calls:
        visit(called, seen | {computation})

  visit(module.entry, frozenset())
  return out


def _where(loops):
  return "outside loops" if not loops else " > ".join(
      f"while@{src or '?'} x{trip if trip is not None else '?'}" for src, trip in loops)


def table(found, loops=()):
  """(text table, summary dict) of collectives grouped by loop and kind; `loops`
  (while_loops) adds a row for each loop without any."""
  rows = collections.OrderedDict()
  for c in sorted(found, key=lambda c: (len(c.loops), c.loops, c.kind)):
    row = rows.setdefault((_where(c.loops), c.kind), [0, 0, 0, 0])
    row[0] += 1
    row[1] += c.executions
    row[2] += c.bytes * c.executions
    row[3] = max(row[3], c.bytes)
  busy = {where for where, _ in rows}
  for loop in loops:
    if _where([loop]) not in busy and not any(_where([loop]) in w for w in busy):
      rows[(_where([loop]), "(none)")] = [0, 0, 0, 0]
  lines = [f"{'where':<72} {'kind':<19} {'ops':>4} {'runs/step':>9} {'bytes/step':>14} "
           f"{'largest op':>12}"]
  summary = collections.Counter()
  for (where, kind), (ops, runs, total, largest) in rows.items():
    lines.append(f"{where:<72} {kind:<19} {ops:>4} {runs:>9} {total:>14,} {largest:>12,}")
    if not ops:
      continue
    scope = "outside_loops" if where == "outside loops" else "inside_loops"
    summary[f"{kind}/{scope}/ops"] += runs
    summary[f"{kind}/{scope}/bytes"] += total
    summary["total/bytes"] += total
    summary[f"total/{scope}/bytes"] += total
  lines.append(f"{'total':<72} {'':<19} {sum(r[0] for r in rows.values()):>4} "
               f"{sum(r[1] for r in rows.values()):>9} {summary['total/bytes']:>14,}")
  return "\n".join(lines), dict(summary)


def _parse_mesh(text):
  sizes = {"data": 1, "fsdp": 1, "model": 1}
  for part in filter(None, text.split(",")):
    axis, _, n = part.partition("=")
    if axis not in sizes:
      raise SystemExit(f"error: --mesh axis {axis!r} is not one of {sorted(sizes)}")
    sizes[axis] = int(n)
  return sizes


def main(argv):
  devices = next((a.split("=", 1)[1] for a in argv if a.startswith("--devices=")), "8")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={int(devices)}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # pylint: disable=g-import-not-at-top
  import time
  from absl import app, flags
  from ml_collections import config_flags

  flags.DEFINE_integer("devices", 8, "simulated CPU devices")
  flags.DEFINE_string("mesh", "fsdp=-1", "mesh axes, e.g. fsdp=4,model=2 (others 1)")
  flags.DEFINE_integer("batch", 0, "global batch (0: the config's)")
  flags.DEFINE_bool("show", False, "also list every collective op inside loops")
  config_flags.DEFINE_config_file("config", None, "Config file, optionally path:arg.")

  def run(_):
    import jax
    from vlp_jax import config_lib, families
    from vlp_jax.parallel import mesh as mesh_lib, sharding
    from vlp_jax.train import optimizer, state as state_lib
    from vlp_jax.train.step import make_train_step

    config = flags.FLAGS.config
    for axis, n in _parse_mesh(flags.FLAGS.mesh).items():
      config.mesh[axis] = n
    if flags.FLAGS.batch:
      config.train.batch_size = flags.FLAGS.batch
    config_lib.validate(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    family = families.get_family(config)
    tx, lr_fn = optimizer.make(config)
    abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
    step = make_train_step(family, tx, lr_fn, config, mesh, sharding.named(mesh, specs))
    start = time.time()
    text = step.lower(abstract, family.example_batch(config.train.batch_size)).compile().as_text()
    compile_s = time.time() - start
    module = Module(text)
    found = collectives(module)
    text_table, summary = table(found, sorted(set(while_loops(module))))
    print(f"{config.model.name}: {mesh_lib.describe(mesh)}, global batch "
          f"{config.train.batch_size}, {jax.device_count()} devices")
    print(text_table)
    if flags.FLAGS.show:
      for c in found:
        if c.loops:
          print(f"  {c.kind} {c.name} in {c.computation}: {c.bytes:,} bytes, group {c.group}")
    summary.update(mesh=dict(mesh.shape), batch=config.train.batch_size,
                   compile_s=round(compile_s, 1))
    print(json.dumps(summary, sort_keys=True))

  app.run(run, argv=[argv[0]] + [a for a in argv[1:]])


if __name__ == "__main__":
  main(sys.argv)
