"""bench/mplug_fusion_cost.py counts what the formulas say: jaxpr matmul FLOPs of the
connected (b), skip-connected (a) and co-attention (c) networks on a tiny config equal the
hand counts, so the bench's FLOP columns can be trusted at BERT-base size."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import mplug_fusion_cost as bench  # pylint: disable=wrong-import-position

D, HEADS, MLP, T, N_IMG, DEPTH = 16, 2, 32, 5, 7, 6


def self_layer(length):
  """QKV + output projections, scores and weighted values, MLP (2 FLOPs per multiply-add)."""
  return 8 * length * D * D + 4 * length * length * D + 4 * length * D * MLP


def cross(queries, keys):
  """Q and output projections of the queries, K/V of the keys, scores and weighted values."""
  return 4 * queries * D * D + 4 * keys * D * D + 4 * queries * keys * D


@pytest.fixture(scope="module")
def flops():
  nets = bench.networks(DEPTH, [(2, 2), (5, 1)], width=D, heads=HEADS, mlp=MLP)
  out = {}
  for name, module in nets.items():
    params = bench.abstract_params(module, N_IMG, T, D)
    out[name] = bench.forward_flops(module, params, N_IMG, T, D)
  return out


def test_connected_everywhere(flops):
  assert flops["b connected"] == DEPTH * self_layer(N_IMG + T)


@pytest.mark.parametrize("s,n", [(2, 2), (5, 1)])
def test_skip_connected(flops, s, n):
  asymmetric = self_layer(T) + cross(T, N_IMG)
  assert flops[f"a skip S={s},N={n}"] == n * (s * asymmetric + self_layer(N_IMG + T))


def test_co_attention(flops):
  text = self_layer(T) + cross(T, N_IMG)
  image = self_layer(N_IMG) + cross(N_IMG, T)
  assert flops["c co-attention"] == DEPTH * (text + image)
