"""Imports TensorFlow for input pipelines only: it must never claim the accelerators JAX uses."""
import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
