"""Autoregressive decoding inside jit: greedy, top-k / nucleus sampling and beam search.

Each drives `step_fn(cache, ids [N], position) -> (logits [N, V], cache)`, one position of
a decoder whose attention layers keep KV caches (layers.Attention with decode=True), under
lax.while_loop: a batch decodes in one compiled program and stops once every row is done.
Rows come out as the tokenizer writes captions: the generated tokens up to and including
EOS, then padding 0; a row that reaches `max_len` without EOS ends there (truncated, as
the tokenizer truncates). Padding is never generated.
"""
import jax
import jax.numpy as jnp

PAD_ID = 0
NEG_INF = -1e9  # finite, so that dead hypotheses never turn scores into nan


def filter_logits(logits, top_k=0, top_p=1.0):
  """Sets to NEG_INF every logit outside the top_k (0: no limit) and then outside the
  nucleus: the fewest most likely tokens whose probability reaches top_p (1.0: all)."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    ordered = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    smallest_kept = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1,
                            keepdims=True)
    logits = jnp.where(logits < smallest_kept, NEG_INF, logits)
  return logits


def sample(step_fn, cache, batch_size, max_len, start_id, eos_id, rng=None, temperature=1.0,
           top_k=0, top_p=1.0, forced=None, forced_len=None):
  """[batch_size, max_len] tokens drawn from filter_logits(logits / temperature);
  temperature 0 takes the argmax (greedy).

  `forced` [b, P] with `forced_len` [b]: a prompt per row (VQA's questions differ in
  length, and the caches have no key-padding mask to left-pad them): row r reads
  forced[r, :forced_len[r]] after the start symbol, then its own tokens, recorded from
  column 0. Rows step together, at most max(forced_len) + max_len steps.
  """
  if forced is None:
    forced = jnp.zeros((batch_size, 1), jnp.int32)
    forced_len = jnp.zeros((batch_size,), jnp.int32)
  steps = max_len + jnp.max(forced_len)
  columns = jnp.arange(max_len)[None, :]

  def cond(state):
    t, _, _, done, _, _ = state
    return (t < steps) & ~jnp.all(done)

  def body(state):
    t, out, last, done, cache, rng = state
    logits, cache = step_fn(cache, last, t)
    logits = logits.astype(jnp.float32).at[:, PAD_ID].set(NEG_INF)
    if temperature == 0:
      token = jnp.argmax(logits, axis=-1)
    else:
      rng, key = jax.random.split(rng)
      token = jax.random.categorical(key, filter_logits(logits / temperature, top_k, top_p))
    column = t - forced_len  # where row r records this step's token (< 0: still forced)
    prompted = jnp.take(forced, jnp.minimum(t, forced.shape[1] - 1), axis=1)
    token = jnp.where(column < 0, prompted, jnp.where(done, PAD_ID, token)).astype(jnp.int32)
    record = (column >= 0) & ~done
    out = jnp.where(record[:, None] & (columns == column[:, None]), token[:, None], out)
    done = done | (record & ((token == eos_id) | (column == max_len - 1)))
    return t + 1, out, token, done, cache, rng

  state = (jnp.int32(0), jnp.zeros((batch_size, max_len), jnp.int32),
           jnp.full((batch_size,), start_id, jnp.int32), jnp.zeros((batch_size,), bool), cache,
           jax.random.PRNGKey(0) if rng is None else rng)
  return jax.lax.while_loop(cond, body, state)[1]


def after_prompt(step_fn, cache, rows, start_id, prompt):
  """(step_fn, cache, start id) that continue a caption whose first tokens are `prompt`
  (a tuple of ids, forced: "a photo of"): the start symbol and all but the last prompt
  token go through the caches here, the last is the decoders' first input, and positions
  count on from the prompt. An empty prompt changes nothing."""
  if not prompt:
    return step_fn, cache, start_id
  for position, token in enumerate((start_id,) + tuple(prompt[:-1])):
    _, cache = step_fn(cache, jnp.full((rows,), token, jnp.int32), position)
  shift = len(prompt)
  return (lambda c, ids, t: step_fn(c, ids, t + shift)), cache, prompt[-1]


def greedy(step_fn, cache, batch_size, max_len, start_id, eos_id, forced=None, forced_len=None):
  return sample(step_fn, cache, batch_size, max_len, start_id, eos_id, temperature=0.0,
                forced=forced, forced_len=forced_len)


def length_penalty(length, alpha):
  """GNMT's ((5 + length) / 6) ** alpha; a hypothesis scores log P / length_penalty."""
  return ((5.0 + length) / 6.0) ** alpha


def gather_beams(cache, index):
  """Rows `index` of every per-row KV cache of layers.Attention.

  The batch is the first axis, or the second under a scanned stack ("blocks", layers
  first). Cache indices are per layer, and cross-attention keys/values are the same for
  every beam of an example (beams never change example), so neither moves.
  """
  def gather(path, x):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] in ("cache_index", "cross_key", "cross_value", "cross_mask"):
      return x
    return jnp.take(x, index, axis=1 if "blocks" in names else 0)
  return jax.tree_util.tree_map_with_path(gather, cache)


def beam_search(step_fn, cache, batch_size, beam_size, max_len, start_id, eos_id, alpha=0.6):
  """(tokens [B, K, max_len], scores [B, K]), each example's K best hypotheses, best first.

  `cache` holds B*K rows, example b in rows b*K .. b*K+K-1. A hypothesis ends at EOS or
  after max_len tokens and scores sum(log p) / length_penalty(its length, alpha). Each step
  extends every alive hypothesis by every token and keeps the 2K best extensions (at most K
  end in EOS, so at least K go on): those that end join the K best finished, the K best
  others stay alive (ranked by log P). It stops when no alive hypothesis can still beat
  the K-th finished one: for alpha >= 0 none can score above log P / length_penalty(max_len).
  Rows with score <= NEG_INF / 2 are filler (fewer than K hypotheses exist).
  """
  b, k, n = batch_size, beam_size, max_len

  def cond(s):
    bound = s["alive_logp"][:, 0] / length_penalty(n, alpha)
    return (s["t"] < n) & ~jnp.all(s["fin_score"][:, -1] >= bound)

  def body(s):
    t = s["t"]
    logits, cache = step_fn(s["cache"], s["last"].reshape(b * k), t)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab = logp.shape[-1]
    logp = logp.reshape(b, k, vocab).at[..., PAD_ID].set(NEG_INF)
    cand = (s["alive_logp"][..., None] + logp).reshape(b, k * vocab)
    top, idx = jax.lax.top_k(cand, 2 * k)
    parent, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(s["alive_seq"], parent[..., None], axis=1).at[:, :, t].set(token)
    ends = (token == eos_id) | (t + 1 == n)

    fin_score = jnp.concatenate(
        [s["fin_score"], jnp.where(ends, top / length_penalty(t + 1, alpha), NEG_INF)], axis=1)
    fin_score, i = jax.lax.top_k(fin_score, k)
    fin_seq = jnp.take_along_axis(jnp.concatenate([s["fin_seq"], seqs], axis=1), i[..., None],
                                  axis=1)

    alive_logp, j = jax.lax.top_k(jnp.where(ends, NEG_INF, top), k)
    rows = (jnp.arange(b)[:, None] * k + jnp.take_along_axis(parent, j, axis=1)).reshape(-1)
    return dict(t=t + 1, cache=gather_beams(cache, rows), alive_logp=alive_logp,
                alive_seq=jnp.take_along_axis(seqs, j[..., None], axis=1),
                last=jnp.take_along_axis(token, j, axis=1), fin_seq=fin_seq, fin_score=fin_score)

  first = jnp.zeros((b, k), jnp.float32).at[:, 1:].set(NEG_INF)  # one live start per example
  state = dict(t=jnp.int32(0), cache=cache, alive_logp=first,
               alive_seq=jnp.zeros((b, k, n), jnp.int32),
               last=jnp.full((b, k), start_id, jnp.int32),
               fin_seq=jnp.zeros((b, k, n), jnp.int32),
               fin_score=jnp.full((b, k), 2 * NEG_INF, jnp.float32))
  s = jax.lax.while_loop(cond, body, state)
  return s["fin_seq"], s["fin_score"]
