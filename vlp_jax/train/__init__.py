"""Train state, optimizer, the jitted step, checkpoints and the training loop."""
