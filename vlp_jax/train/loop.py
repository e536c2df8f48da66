"""The training loop and checkpoint evaluation, shared by every family.

Plain functions in the order data flows: mesh -> tokenizer and input -> family -> sharded
state (fresh or restored) -> jitted step -> checkpoints, metrics, evaluation.
"""
import collections
import dataclasses
import json
import math
import os
import time

import jax
from absl import logging
from clu import metric_writers, periodic_actions

from vlp_jax import config_lib, data, families, run_config
from vlp_jax.data.tf_setup import tf
from vlp_jax.evaluate import probe, runner, vqa
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import checkpoint, fingerprint, init_from, optimizer, state as state_lib
from vlp_jax.train.step import make_train_step

TOKENIZER_FILE = "tokenizer.model"  # data/tokenizer.py: a run's own tokenizer
CONFIG_FILE = run_config.CONFIG_FILE  # the config of the run's latest start


@dataclasses.dataclass
class Setup:
  config: object
  workdir: str
  mesh: object
  tokenizer: object
  family: object
  tx: object
  lr_fn: object
  abstract_state: object
  shardings: object
  checkpointer: checkpoint.Checkpointer


def setup(config, workdir, reading=False, allow_config_change=False):
  """Everything a run needs before its first step; fails fast on bad config and data.

  `reading`: evaluation or captioning of an existing run, which never writes to workdir.
  """
  config_lib.validate(config)
  check_workdir(workdir, reading)
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.batch_size_per_shard(config.train.batch_size // config.train.accum_steps, mesh,
                                "train.batch_size / train.accum_steps")
  t = config.train
  checkpointer = checkpoint.Checkpointer(
      workdir, t.checkpoint_every, t.keep_checkpoints,
      fingerprint=fingerprint.fingerprint(config), allow_config_change=allow_config_change,
      read_only=reading)
  if reading and checkpointer.latest_step() is None:
    raise ValueError(f"No checkpoint in {checkpointer.directory}; train first "
                     f"(--mode=train) or pass --workdir of a trained run")
  if not reading:
    tf.io.gfile.makedirs(workdir)
    use_compile_cache(config, workdir)
    write_config(config, workdir)
  tokenizer = None
  if families.FAMILIES[config.model.name].USES_TOKENIZER:
    if not reading:
      inherit_tokenizer(config, workdir)
    tokenizer = data.get_tokenizer(config, workdir, reading=reading)
  family = families.get_family(config, tokenizer.eos_id if tokenizer else 1)
  family.prepare(workdir, reading)
  tx, lr_fn = optimizer.make(config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  return Setup(config, workdir, mesh, tokenizer, family, tx, lr_fn, abstract,
               sharding.named(mesh, specs), checkpointer)


def write_config(config, workdir):
  """WORKDIR/config.json, by process 0: what `--mode=export` and `vlp_jax.load` read when no
  --config is given. Rewritten at each start (a resumed run may change training fields)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.{os.getpid()}.tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(config_lib.to_json(config))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def inherit_tokenizer(config, workdir):
  """A run started from one other run's parameters (model.init_from) reads text as that
  run did: its tokenizer (tokenizer.model, or a tokenizer/ folder) is copied into the new
  workdir (by process 0) when neither data.tokenizer nor the workdir names one, rather than
  a new one being trained on this run's data, whose ids would not match the restored token
  embeddings. A whole model imported from open_clip or HF needs data.tokenizer: its
  vocabulary is not ours to guess."""
  runs = [run.strip() for run in config.model.init_from.split(";") if run.strip()]
  if config.data.tokenizer or len(runs) != 1 or tf.io.gfile.exists(
      os.path.join(workdir, TOKENIZER_FILE)) or tf.io.gfile.exists(
          os.path.join(workdir, "tokenizer")):
    return
  kind, run_dir = init_from.scheme_path(runs[0])
  if kind in init_from.IMPORTED:
    if not config.model.init_from_map.strip():
      raise ValueError(f"Config field 'data.tokenizer' is empty, but model.init_from="
                       f"{runs[0]} imports a whole model with its own vocabulary: set "
                       f"data.tokenizer=clip_bpe:PATH (CLIP) or spm:PATH (SigLIP)")
    return
  for name in (TOKENIZER_FILE, "tokenizer"):
    source, target = os.path.join(run_dir, name), os.path.join(workdir, name)
    if tf.io.gfile.exists(source):
      logging.info("tokenizer of model.init_from: %s", source)
      mesh_lib.write_once(target, lambda s=source, t=target: copy_file(s, t), "tokenizer")
      return


def copy_file(source, target):
  """A file, or a folder's files (a BPE vocabulary), from one run to another."""
  if not tf.io.gfile.isdir(source):
    tf.io.gfile.copy(source, target)
    return
  tf.io.gfile.makedirs(target)
  for child in tf.io.gfile.listdir(source):
    tf.io.gfile.copy(os.path.join(source, child), os.path.join(target, child))


def check_workdir(workdir, reading):
  """One-line errors for a workdir that cannot hold (or does not hold) a run."""
  if "://" in workdir:
    return  # cloud storage: orbax and gfile report their own errors
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file, not a directory")
  if reading:
    if not os.path.isdir(workdir):
      raise ValueError(f"--workdir={workdir} does not exist; pass the workdir of a trained run")
    return
  probe = os.path.join(workdir, f".write_test.{os.getpid()}")
  try:  # what access() says is not what root on a read-only mount may do: try it
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"--workdir={workdir} is not writable ({e.strerror}: "
                     f"{e.filename or workdir})") from None


def use_compile_cache(config, workdir):
  """jax's persistent compilation cache, so a restarted run skips the compile."""
  where = config.train.compile_cache
  if where == "none":
    return
  where = where or os.path.join(workdir, "compile_cache")
  current = jax.config.jax_compilation_cache_dir
  if current and current != where:
    # jax initialises its cache once per process: a second run in the same process
    # (tests, notebooks) keeps the first directory.
    logging.info("compilation cache stays at %s (not %s)", current, where)
    return
  jax.config.update("jax_compilation_cache_dir", where)


def load_eval_sets(s):
  """(eval sets of data.eval, probe sets [(name, train, test)] of data.probe when the
  family can be probed)."""
  c = s.config
  load = lambda spec, tok: data.load_eval_set(spec, c, tok, data_dir=c.data.data_dir,
                                              holdout_percent=c.data.holdout_percent,
                                              mesh=s.mesh)
  probes = []
  if c.data.probe and "probe" in s.family.EVALUATIONS:
    probes = [(name, load(train, None), load(test, None))
              for name, train, test in probe.parse_probe_specs(c.data.probe)]
  return [load(spec, s.tokenizer) for spec in config_lib.eval_specs(c)], probes


def make_encoder(s):
  """The evaluators' encoder; one that also answers questions when the family declares the
  vqa evaluation (answers of vqa.answer_length tokens)."""
  c = s.config
  if "vqa" in s.family.EVALUATIONS:
    return vqa.Answerer(s.family, s.mesh, c.eval.batch_size, c.vqa.answer_length)
  return runner.Encoder(s.family, s.mesh, c.eval.batch_size)


def device_batches(iterator, mesh, depth, global_batch):
  """Host batches -> global arrays on the mesh, `depth` ahead; yields (batch, position, skipped).

  Each host passes only its own rows (sharding.process_rows, which the iterator was built
  with); jax assembles the global batch sharded over data x fsdp.
  """
  target = sharding.batch_sharding(mesh)
  queue = collections.deque()

  def put():
    local = next(iterator)
    arrays = {k: jax.make_array_from_process_local_data(target, v, (global_batch,) + v.shape[1:])
              for k, v in local.items()}
    queue.append((arrays, iterator.position, dict(iterator.skipped)))

  for _ in range(max(depth, 1)):
    put()
  while True:
    item = queue.popleft()
    put()
    yield item


class MetricsLog:
  """TensorBoard + console through clu, and workdir/metrics.jsonl for scripts and tests."""

  def __init__(self, workdir, start_step=0):
    self.primary = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.primary)
    # Cloud storage cannot append, so remote workdirs rely on the TensorBoard events alone.
    self.path = None if "://" in workdir else os.path.join(workdir, "metrics.jsonl")
    if self.primary and self.path:
      self._truncate(start_step)

  def _truncate(self, start_step):
    """Drops the lines of steps after `start_step`: a run killed after its last checkpoint
    logged steps that the resumed run logs again."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = [line for line in lines if _line_step(line) <= start_step]
    if len(kept) != len(lines):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, step, scalars):
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self.primary and self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(dict(step=step, **strict_json(scalars)), allow_nan=False) + "\n")

  def close(self):
    self.writer.flush()
    self.writer.close()


def _line_step(line):
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return -1  # a torn last line


def strict_json(scalars):
  """NaN and infinities as null: JSON has no such numbers."""
  return {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
          for k, v in scalars.items()}


class NonFiniteError(ValueError):
  """Training met non-finite values that config.train.nonfinite does not tolerate."""


def check_finite(config, counters, latest_checkpoint):
  """Raises NonFiniteError when the step's counters (from the state, read only when the
  loop syncs anyway) say the run must stop."""
  skipped, streak, first = (int(counters[k]) for k in
                            ("skipped_nonfinite", "nonfinite_streak", "nonfinite_step"))
  t = config.train
  kept = (f"the parameters were not updated; the latest checkpoint (step "
          f"{latest_checkpoint}) is the last good one" if latest_checkpoint is not None else
          "the parameters were not updated; no checkpoint was written yet")
  if t.nonfinite == "stop" and skipped:
    raise NonFiniteError(
        f"step {first}: the loss, gradient norm or "
        f"updated parameters are not finite (train.nonfinite=stop); {kept}. Lower optim.lr, "
        f"or set train.nonfinite=skip to skip such batches")
  if t.nonfinite == "skip" and streak >= t.max_nonfinite:
    raise NonFiniteError(
        f"steps {first} to {first + streak - 1}: {streak} non-finite steps in a row "
        f"(train.max_nonfinite={t.max_nonfinite}); {kept}")


def _train_metrics(values, skipped):
  """What a log line shows: the step's metrics (the non-finite streak and its start are
  bookkeeping for check_finite), the skipped-record counts."""
  out = {k: float(v) for k, v in values.items() if k not in ("nonfinite_streak", "nonfinite_step")}
  out["train/skipped_nonfinite"] = out.pop("skipped_nonfinite")
  return dict(out, **_skip_metrics(skipped))


def _skip_metrics(skipped):
  return {f"data/skipped/{reason}": n for reason, n in skipped.items()}


def train(config, workdir, allow_config_change=False):
  """Trains from scratch or resumes from workdir; returns the final metrics."""
  s = setup(config, workdir, allow_config_change=allow_config_change)
  c = config
  restored = s.checkpointer.restore(s.abstract_state, s.shardings)
  if restored is None:
    loaded = init_from.load(c.model.init_from, c.model.init_from_map, s.abstract_state.params,
                            c.model)
    if loaded is not None:
      logging.info("init_from %s: %s", c.model.init_from, init_from.summary(loaded))
    state, _ = state_lib.create(s.family, s.tx, c.seed, s.mesh, loaded)
    position = 0
  else:
    state, position = restored
  start = int(state.step)
  logging.info("mesh %s; starting at step %d, input position %d", mesh_lib.describe(s.mesh),
               start, position)

  global_batch = c.train.batch_size
  rows = sharding.process_rows(sharding.batch_sharding(s.mesh), global_batch)
  iterator = data.TrainIterator(c, s.tokenizer, position=position,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(), rows=rows, family=s.family)
  batches = device_batches(iterator, s.mesh, c.data.prefetch, global_batch)
  eval_sets, probe_sets = load_eval_sets(s)
  encoder = make_encoder(s)
  step_fn = make_train_step(s.family, s.tx, s.lr_fn, c, s.mesh, s.shardings)
  log = MetricsLog(workdir, start)
  counters = ("skipped_nonfinite", "nonfinite_streak", "nonfinite_step")

  def check(step_metrics):
    """Stops a diverged run before anything is saved; a sync, so only where one happens."""
    check_finite(c, {k: step_metrics[k] for k in counters}, s.checkpointer.latest_step())
  hooks = [periodic_actions.ReportProgress(num_train_steps=c.train.steps, writer=log.writer,
                                           every_steps=c.train.log_every, every_secs=None)]
  if c.train.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=c.train.profile_steps,
                                          first_profile=start + c.train.log_every + 1))
  if c.train.profile_port:
    jax.profiler.start_server(c.train.profile_port)
  stop = checkpoint.StopSignal()
  final, metrics, skipped, iterator_position = {}, None, {}, position
  try:
    for step in range(start + 1, c.train.steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch, iterator_position, skipped = next(batches)
        state, metrics = step_fn(state, batch)
      for hook in hooks:
        hook(step)
      logs = step % c.train.log_every == 0 or step == c.train.steps
      saves = s.checkpointer.due(step)
      preempted = stop.requested or s.checkpointer.reached_preemption(step)
      if logs or saves or preempted:
        values = jax.device_get(metrics)
        if logs:
          log.write(step, _train_metrics(values, skipped))
        check(values)
      if saves:
        s.checkpointer.save(step, state, lambda: iterator_position)
      if preempted:
        s.checkpointer.save(step, state, lambda: iterator_position, force=True)
        s.checkpointer.wait()
        logging.warning("stopped at step %d; rerun the same command to resume", step)
        return {"step": step, "stopped": True}
      if (eval_sets or probe_sets) and c.train.eval_every and step % c.train.eval_every == 0 \
          and step != c.train.steps:
        log.write(step, runner.evaluate(encoder, state.params, s.tokenizer, eval_sets,
                                        s.family.EVALUATIONS, probe_sets, c.eval.itm_top_k))
    if metrics is not None:
      values = jax.device_get(metrics)
      check(values)
      final.update(_train_metrics(values, {}))
    s.checkpointer.save(c.train.steps, state, lambda: iterator_position, force=True)
    s.checkpointer.wait()
    if eval_sets or probe_sets:
      results = runner.evaluate(encoder, state.params, s.tokenizer, eval_sets,
                                s.family.EVALUATIONS, probe_sets, c.eval.itm_top_k)
      if "caption" in s.family.EVALUATIONS:
        # Imported here: the captioner builds on this module (setup) for --mode=caption.
        from vlp_jax.evaluate import captioner  # pylint: disable=g-import-not-at-top
        results.update(captioner.evaluate_sets(s.family, s.mesh, state.params, s.tokenizer,
                                               eval_sets, c))
      log.write(c.train.steps, results)
      final.update(results)
  finally:
    stop.restore()
    log.close()
    s.checkpointer.close()
  final.update(_skip_metrics(skipped))
  final["step"] = c.train.steps
  return final


def restore_for_reading(config, workdir, step=None, allow_config_change=False):
  """(Setup, train state) of the latest (or the given) checkpoint of an existing run, for
  tools that only read it (evaluation, CapFilt); nothing in workdir is written."""
  s = setup(config, workdir, reading=True, allow_config_change=allow_config_change)
  restored = s.checkpointer.restore(s.abstract_state, s.shardings, step)
  if restored is None:
    raise ValueError(f"No checkpoint in {s.checkpointer.directory}; train first "
                     f"(--mode=train) or pass --workdir of a trained run")
  return s, restored[0]


def evaluate_checkpoint(config, workdir, step=None, allow_config_change=False):
  """Evaluates the latest (or the given) checkpoint in workdir on `data.eval`."""
  s, state = restore_for_reading(config, workdir, step, allow_config_change)
  eval_sets, probe_sets = load_eval_sets(s)
  if not (eval_sets or probe_sets):
    raise ValueError("Config fields 'data.eval' and 'data.probe' name no evaluation set")
  encoder = make_encoder(s)
  started = time.time()
  results = runner.evaluate(encoder, state.params, s.tokenizer, eval_sets,
                            s.family.EVALUATIONS, probe_sets, config.eval.itm_top_k)
  logging.info("evaluation took %.1fs", time.time() - started)
  s.checkpointer.close()
  return dict(results, step=int(state.step))

