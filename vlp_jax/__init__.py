"""vlp_jax: pretraining vision-language models in JAX/Flax, TPU first.

`vlp_jax.load(PATH)` gives a trained model to use from Python (vlp_jax/api.py); importing
the package itself stays light (no jax until then).
"""


def load(path, **kwargs):
  """vlp_jax.api.load: a Model of an export, a run's workdir, open_clip:FILE or hf:DIR."""
  from vlp_jax import api  # pylint: disable=g-import-not-at-top
  return api.load(path, **kwargs)
