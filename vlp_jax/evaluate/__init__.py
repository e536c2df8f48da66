"""Evaluation: zero-shot classification, retrieval and captioning (BLEU-4, CIDEr-D) metrics."""
