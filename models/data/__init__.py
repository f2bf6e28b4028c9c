"""Small data files shipped with the package (embedded default prior, initialiser weights)."""
