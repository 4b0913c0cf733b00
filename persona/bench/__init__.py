"""Benches that ship with the package (so an installed `persona` can run them)."""
