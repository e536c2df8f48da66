"""mPLUG's skip-connected fusion: the asymmetric layers leave the image tokens untouched,
the connected layer mixes both ways, padding is never attended."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.models import fusion, mplug


@pytest.fixture(scope="module")
def fusion_net():
  m = mplug.SkipConnectedFusion(num_blocks=2, asymmetric_layers=2, num_heads=2, mlp_dim=32)
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  text = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)
  ids = jnp.array([[3, 9, 10, 11, 1, 0], [3, 20, 1, 0, 0, 0]], jnp.int32)
  params = m.init(jax.random.PRNGKey(0), image, text, ids)
  run = jax.jit(lambda image, text, ids: m.apply(params, image, text, ids,
                                                 capture_intermediates=True))
  return run, params, image, text, ids


def _output(state, name):
  """What layer `name` returned (TextLayer returns (x, None))."""
  return state["intermediates"][name]["__call__"][0][0]


def test_asymmetric_layers_leave_image_tokens_bit_identical(fusion_net):
  """Block 1's connected layer, run alone on block 0's image output and block 1's last
  asymmetric text output, gives the network's outputs exactly: the image tokens crossed
  two asymmetric layers untouched."""
  run, params, image, text, ids = fusion_net
  m = mplug.SkipConnectedFusion(num_blocks=2, asymmetric_layers=2, num_heads=2, mlp_dim=32)
  # Op by op (not jitted), as the layer run alone below, so equal means bit-identical.
  (out_image, out_text), state = m.apply(params, image, text, ids, capture_intermediates=True)
  image_0 = _output(state, "block_0_connected")[:, :5]
  text_1 = _output(state, "block_1_asymmetric_1")
  keys = jnp.concatenate([jnp.ones((2, 5), bool), ids != 0], axis=1)[:, None, None, :]
  layer = fusion.TextLayer(num_heads=2, mlp_dim=32)
  x, _ = layer.apply({"params": params["params"]["block_1_connected"]},
                     jnp.concatenate([image_0, text_1], axis=1), keys)
  np.testing.assert_array_equal(x[:, :5], out_image)
  np.testing.assert_array_equal(x[:, 5:], out_text)
  # ... and the asymmetric layers did read the image (cross-attention).
  (_, _), moved = run(image.at[0, 0].add(1.0), text, ids)
  assert np.abs(_output(moved, "block_0_asymmetric_0")[0]
                - _output(state, "block_0_asymmetric_0")[0]).max() > 1e-4


def test_connected_layer_mixes_image_and_text(fusion_net):
  run, _, image, text, ids = fusion_net
  (out_image, out_text), _ = run(image, text, ids)
  (img2, txt2), _ = run(image, text.at[0, 1].add(1.0), ids)
  assert np.abs(img2[0] - out_image[0]).max() > 1e-4  # image tokens see the text
  np.testing.assert_array_equal(img2[1], out_image[1])  # rows stay apart
  (img3, txt3), _ = run(image.at[0, 0].add(1.0), text, ids)
  assert np.abs(txt3[0] - out_text[0]).max() > 1e-4  # text sees the image


def test_padding_is_never_attended(fusion_net):
  run, _, image, text, ids = fusion_net
  (out_image, out_text), _ = run(image, text, ids)
  (img2, txt2), _ = run(image, text.at[1, 4].add(5.0), ids)  # a padding position of row 1
  np.testing.assert_array_equal(img2[1], out_image[1])
  np.testing.assert_array_equal(txt2[1, :3], out_text[1, :3])
