"""halo layer."""
