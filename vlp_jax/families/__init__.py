"""Model families: what the trainer needs to know about a model, and nothing more.

A family bundles its module, the batch fields it reads, its per-example forward pass
(`features`), its global loss, its state and frozen parameters, and what it can be
evaluated on: the contract in base.py. The trainer and the evaluators only talk to that
interface, so adding a family never touches the loop.
"""
from vlp_jax.families.base import FAMILIES, Family, get_family, register
# Importing the modules registers their families.
from vlp_jax.families.clip import ClipFamily, SiglipFamily
from vlp_jax.families.coca import CocaFamily
from vlp_jax.families.catlip import CatlipFamily
from vlp_jax.families.albef import AlbefFamily
from vlp_jax.families.blip import BlipFamily
from vlp_jax.families.mplug import MplugFamily
from vlp_jax.families.blip2 import Blip2Family
from vlp_jax.families.soft_prompt import Blip2LmFamily, KeywordLmFamily, PrefixLmFamily
from vlp_jax.families.lm import LmFamily
from vlp_jax.families.vqa import VqaFamily  # wraps one of the above: registered after them

__all__ = ["FAMILIES", "Family", "get_family", "register", "ClipFamily", "SiglipFamily",
           "CocaFamily", "CatlipFamily", "AlbefFamily", "BlipFamily", "MplugFamily", "Blip2Family", "Blip2LmFamily",
           "PrefixLmFamily", "KeywordLmFamily", "LmFamily", "VqaFamily"]
