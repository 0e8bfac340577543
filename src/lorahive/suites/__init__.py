"""lorahive.suites."""
