"""lorahive.store."""
