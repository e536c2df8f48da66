"""Command-line tools built on trained runs (`python -m vlp_jax.tools.<name>`)."""
