"""Data sets for composed image retrieval: a procedural shapes benchmark (pure NumPy)."""

from __future__ import annotations

from .shapes import (
    SAME_DESIGN,
    ShapesBenchmark,
    ShapesSplit,
    build_open_shapes_benchmark,
    build_shapes_benchmark,
)

__all__ = [
    "SAME_DESIGN",
    "ShapesBenchmark",
    "ShapesSplit",
    "build_open_shapes_benchmark",
    "build_shapes_benchmark",
]
