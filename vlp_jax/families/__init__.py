"""Model families: what the trainer needs to know about a model, and nothing more.

A family bundles its module, the batch fields it reads, its per-example forward pass
(`features`), its global loss and its evaluation hooks. The trainer and the evaluators
only talk to this interface, so adding SigLIP or CoCa never touches the loop.
"""
from vlp_jax.families.clip import ClipFamily, SiglipFamily
from vlp_jax.families.coca import CocaFamily

FAMILIES = {"clip": ClipFamily, "siglip": SiglipFamily, "coca": CocaFamily}


def get_family(config, eos_id=1):
  """Builds the family named by `config.model.name`.

  `eos_id` is the tokenizer's end-of-text id (where CLIP pools); shapes do not depend on it.
  """
  name = config.model.name
  if name not in FAMILIES:
    raise ValueError(f"Config field 'model.name': unknown family {name!r}; "
                     f"known: {sorted(FAMILIES)}")
  return FAMILIES[name](config, eos_id)
