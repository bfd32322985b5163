"""A third-party driver for the tests: the memory driver, remembering its settings."""
