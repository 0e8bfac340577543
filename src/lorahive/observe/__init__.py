"""lorahive.observe."""
