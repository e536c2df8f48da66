"""Input side of vlp_jax: data sources, tokenizer, training iterator and evaluation sets.

Specs: builtin:shapes:train|test (generated, no download), jsonl:PATH[:train|:test].
"""
from vlp_jax.data.checks import ALL_REASONS
from vlp_jax.data.eval_set import EvalSet
from vlp_jax.data.eval_set import load_eval_set
from vlp_jax.data.sources import ZeroShotTask
from vlp_jax.data.sources import get_source
from vlp_jax.data.tokenizer import Tokenizer
from vlp_jax.data.tokenizer import get_tokenizer
from vlp_jax.data.tokenizer import train_tokenizer
from vlp_jax.data.train_iterator import TrainIterator

__all__ = [
    "ALL_REASONS", "EvalSet", "TrainIterator", "Tokenizer", "ZeroShotTask", "get_source",
    "get_tokenizer", "load_eval_set", "train_tokenizer",
]
