"""The training loop and checkpoint evaluation, shared by every family.

Plain functions in the order data flows: mesh -> tokenizer and input -> family -> sharded
state (fresh or restored) -> jitted step -> checkpoints, metrics, evaluation.
"""
import collections
import dataclasses
import json
import os
import time

import jax
from absl import logging
from clu import metric_writers, periodic_actions

from vlp_jax import config_lib, data, families
from vlp_jax.data.tf_setup import tf
from vlp_jax.evaluate import runner
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import checkpoint, optimizer, state as state_lib
from vlp_jax.train.step import make_train_step


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
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.batch_size_per_shard(config.train.batch_size // config.train.accum_steps, mesh,
                                "train.batch_size / train.accum_steps")
  tf.io.gfile.makedirs(workdir)
  tokenizer = data.get_tokenizer(config, workdir)
  family = families.get_family(config, tokenizer.eos_id)
  tx, lr_fn = optimizer.make(config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  t = config.train
  return Setup(config, workdir, mesh, tokenizer, family, tx, lr_fn, abstract,
               sharding.named(mesh, specs),
               checkpoint.Checkpointer(workdir, t.checkpoint_every, t.keep_checkpoints))


def load_eval_sets(s):
  c = s.config
  return [data.load_eval_set(spec, c, s.tokenizer, data_dir=c.data.data_dir,
                             holdout_percent=c.data.holdout_percent)
          for spec in config_lib.eval_specs(c)]


def device_batches(iterator, mesh, depth):
  """Host batches -> global arrays on the mesh, `depth` ahead; yields (batch, position, skipped).

  Each host passes only its own rows; jax assembles the global batch sharded over data x fsdp.
  """
  target = sharding.batch_sharding(mesh)
  queue = collections.deque()

  def put():
    local = next(iterator)
    arrays = {k: jax.make_array_from_process_local_data(target, v) for k, v in local.items()}
    queue.append((arrays, iterator.position, dict(iterator.skipped)))

  for _ in range(max(depth, 1)):
    put()
  while True:
    item = queue.popleft()
    put()
    yield item


class MetricsLog:
  """TensorBoard + console through clu, and workdir/metrics.jsonl for scripts and tests."""

  def __init__(self, workdir):
    self.primary = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.primary)
    # Cloud storage cannot append, so remote workdirs rely on the TensorBoard events alone.
    self.path = None if "://" in workdir else os.path.join(workdir, "metrics.jsonl")

  def write(self, step, scalars):
    scalars = {k: float(v) for k, v in scalars.items()}
    self.writer.write_scalars(step, scalars)
    if self.primary and self.path:
      with open(self.path, "a") as f:
        f.write(json.dumps(dict(step=step, **scalars)) + "\n")

  def close(self):
    self.writer.flush()
    self.writer.close()


def _skip_metrics(skipped):
  return {f"data/skipped/{reason}": n for reason, n in skipped.items()}


def train(config, workdir, allow_config_change=False):
  """Trains from scratch or resumes from workdir; returns the final metrics."""
  s = setup(config, workdir, allow_config_change=allow_config_change)
  c = config
  restored = s.checkpointer.restore(s.abstract_state, s.shardings)
  if restored is None:
    state, _ = state_lib.create(s.family, s.tx, c.seed, s.mesh)
    position = 0
  else:
    state, position = restored
  start = int(state.step)
  logging.info("mesh %s; starting at step %d, input position %d", mesh_lib.describe(s.mesh),
               start, position)

  iterator = data.TrainIterator(c, s.tokenizer, position=position,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  batches = device_batches(iterator, s.mesh, c.data.prefetch)
  eval_sets = load_eval_sets(s)
  encoder = runner.Encoder(s.family, s.mesh, c.eval.batch_size)
  step_fn = make_train_step(s.family, s.tx, s.lr_fn, c, s.mesh, s.shardings)
  log = MetricsLog(workdir)
  hooks = [periodic_actions.ReportProgress(num_train_steps=c.train.steps, writer=log.writer,
                                           every_steps=c.train.log_every, every_secs=None)]
  if c.train.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=c.train.profile_steps,
                                          first_profile=start + c.train.log_every + 1))
  if c.train.profile_port:
    jax.profiler.start_server(c.train.profile_port)
  stop = checkpoint.StopSignal()
  final, metrics, skipped = {}, None, {}
  try:
    for step in range(start + 1, c.train.steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch, position, skipped = next(batches)
        state, metrics = step_fn(state, batch)
      for hook in hooks:
        hook(step)
      if step % c.train.log_every == 0 or step == c.train.steps:
        log.write(step, dict(jax.device_get(metrics), **_skip_metrics(skipped)))
      s.checkpointer.save(step, state, position)
      if stop.requested or s.checkpointer.reached_preemption(step):
        s.checkpointer.save(step, state, position, force=True)
        s.checkpointer.wait()
        logging.warning("stopped at step %d; rerun the same command to resume", step)
        return {"step": step, "stopped": True}
      if eval_sets and c.train.eval_every and step % c.train.eval_every == 0 \
          and step != c.train.steps:
        log.write(step, runner.evaluate(encoder, state.params, s.tokenizer, eval_sets))
    if metrics is not None:
      final.update({k: float(v) for k, v in jax.device_get(metrics).items()})
    s.checkpointer.save(c.train.steps, state, position, force=True)
    s.checkpointer.wait()
    if eval_sets:
      results = runner.evaluate(encoder, state.params, s.tokenizer, eval_sets)
      if hasattr(s.family, "caption"):
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


def evaluate_checkpoint(config, workdir, step=None, allow_config_change=False):
  """Evaluates the latest (or the given) checkpoint in workdir on `data.eval`."""
  s = setup(config, workdir, reading=True, allow_config_change=allow_config_change)
  restored = s.checkpointer.restore(s.abstract_state, s.shardings, step)
  if restored is None:
    raise ValueError(f"No checkpoint in {s.checkpointer.directory}; train first "
                     f"(--mode=train) or pass --workdir of a trained run")
  state, _ = restored
  eval_sets = load_eval_sets(s)
  if not eval_sets:
    raise ValueError("Config field 'data.eval' names no evaluation set")
  encoder = runner.Encoder(s.family, s.mesh, config.eval.batch_size)
  started = time.time()
  results = runner.evaluate(encoder, state.params, s.tokenizer, eval_sets)
  logging.info("evaluation took %.1fs", time.time() - started)
  s.checkpointer.close()
  return dict(results, step=int(state.step))

