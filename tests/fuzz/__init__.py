"""Fuzz targets: one per decoder; only the project's typed errors may come out (issue 18)."""
