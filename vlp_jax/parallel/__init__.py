"""Meshes, sharding rules and multi-host start-up."""
