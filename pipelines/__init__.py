"""Pipeline definitions and the `labelmill` command line."""
