"""Evaluation: zero-shot classification, retrieval and (later) captioning metrics."""
