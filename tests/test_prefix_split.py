"""split_captions: the two parts recombine, every split leaves both sides non-empty and is
uniform over the allowed points, per row and reproducibly."""
import jax
import numpy as np

from vlp_jax.losses import prefix_split

EOS = 2


def captions(seed=0, rows=2000, length=12):
  r = np.random.default_rng(seed)
  tokens = r.integers(7, 100, (rows, length)).astype(np.int32)
  n = r.integers(1, length + 1, rows)  # tokens incl. EOS; 1: EOS alone
  tokens[np.arange(rows), n - 1] = EOS
  tokens[np.arange(length)[None, :] >= n[:, None]] = 0
  return tokens, n


def test_parts_recombine_and_leave_both_sides_non_empty():
  tokens, n = captions()
  prefix, target, split = map(np.asarray, prefix_split.split_captions(
      jax.random.PRNGKey(0), tokens))
  for row in range(len(tokens)):
    s = split[row]
    if n[row] >= 2:
      assert 1 <= s <= n[row] - 1
    else:
      assert s == n[row] and not target[row].any()
    p = prefix[row][prefix[row] != 0]
    t = target[row][target[row] != 0]
    np.testing.assert_array_equal(np.concatenate([p, t]), tokens[row][:n[row]])
    assert len(p) == s  # the prefix never holds a token of the target
    np.testing.assert_array_equal(prefix[row][s:], 0)


def test_split_is_uniform_per_row_and_reproducible():
  tokens, n = captions(rows=20000)
  key = jax.random.PRNGKey(3)
  split = np.asarray(prefix_split.split_captions(key, tokens)[2])
  np.testing.assert_array_equal(split, np.asarray(prefix_split.split_captions(key, tokens)[2]))
  assert (split != np.asarray(prefix_split.split_captions(jax.random.PRNGKey(4), tokens)[2])).any()
  rows = n == 8  # 7 allowed points, each ~1/7
  counts = np.bincount(split[rows], minlength=8)[1:8] / rows.sum()
  np.testing.assert_allclose(counts, 1 / 7, atol=5 * np.sqrt((1 / 7) * (6 / 7) / rows.sum()))
  assert len(set(split[n == 12])) == 11  # rows draw their own points
