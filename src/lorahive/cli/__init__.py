"""lorahive.cli."""
