"""lorahive.mechanisms."""
