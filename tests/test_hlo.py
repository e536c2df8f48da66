"""What the compiled CoCa train step communicates, read from its optimised HLO.

The vocabulary loss must reduce its [D, V] gradient once per step, after its chunk loop:
a reduction inside the loop would move D*V floats per 128-row chunk (bench/collectives.py
prints the whole step's table). The parser is bench/collectives.py's.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.conftest import REPO
from tests.helpers import tiny_config
from vlp_jax import families
from vlp_jax.parallel import mesh as mesh_lib, sharding
from vlp_jax.train import optimizer, state as state_lib
from vlp_jax.train.step import make_train_step

_spec = importlib.util.spec_from_file_location(
    "collectives", os.path.join(REPO, "bench", "collectives.py"))
collectives = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collectives)

VOCAB_LOSS = "vlp_jax/losses/cross_entropy.py"
D, V = 32, 512  # text width, vocabulary: a [D, V] operand stands out from the rest


def test_parser_finds_a_reduction_inside_a_loop():
  """Guards the step test: a scan whose carry sums a sharded matmul all-reduces inside its
  loop, and the parser says so, with the trip count and this file as the loop's source."""
  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))

  def f(x, w):
    def body(c, xi):
      return c + xi @ w, None
    return jnp.sum(jax.lax.scan(body, jnp.zeros((4, 16)), x)[0])

  x = jax.ShapeDtypeStruct((5, 4, 8), jnp.float32, sharding=NamedSharding(mesh, P(None, None, "d")))
  w = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P("d")))
  module = collectives.Module(jax.jit(f).lower(x, w).compile().as_text())
  found = collectives.collectives(module)
  inside = [c for c in found if c.loops]
  assert [c.kind for c in inside] == ["all-reduce"]
  (source, trip), = inside[0].loops
  assert "tests/test_hlo.py" in source and trip == 5
  assert inside[0].elements == 4 * 16 and inside[0].bytes == 4 * 16 * 4
  assert inside[0].executions == 5 and inside[0].group == 8


@pytest.fixture(scope="module")
def coca_step_hlo():
  """The tiny CoCa train step compiled for fsdp=4 x model=2: 16 captions of 32 tokens
  per batch shard, several 128-row chunks of the vocabulary loss per device."""
  config = tiny_config(**{"model.name": "coca", "model.num_decoder_queries": 4,
                          "model.multimodal_depth": 1, "model.text_width": D,
                          "model.vocab_size": V, "model.context_length": 32,
                          "train.batch_size": 64, "mesh.data": 1, "mesh.fsdp": 4,
                          "mesh.model": 2})
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices())
  family = families.get_family(config, eos_id=1)
  tx, lr_fn = optimizer.make(config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  step = make_train_step(family, tx, lr_fn, config, mesh, sharding.named(mesh, specs))
  lowered = step.lower(abstract, family.example_batch(config.train.batch_size))
  return collectives.Module(lowered.compile().as_text())


def test_vocabulary_loss_loop_reduces_nothing_per_chunk(coca_step_hlo):
  """Inside the vocabulary loss's while loop (and the conditionals it calls): no
  all-reduce or reduce-scatter, and no collective anywhere near [D, V] in size."""
  module = coca_step_hlo
  loops = [trip for source, trip in collectives.while_loops(module) if VOCAB_LOSS in source]
  assert loops and all(trip and trip >= 2 for trip in loops), loops  # the loop is there
  found = collectives.collectives(module)
  inside = [c for c in found if any(VOCAB_LOSS in source for source, _ in c.loops)]
  shard = D * V // 8  # [D, V] on one of the 8 devices
  assert not [c for c in inside if c.kind in ("all-reduce", "reduce-scatter")], inside
  assert not [c for c in inside if c.elements >= shard], inside
  # The parser does see the step's collectives: d_kernel's reduction comes once, outside.
  assert any(c.elements >= shard and not c.loops for c in found)
