"""Experiment grids (``btard experiment``): attacks × schedules × seeds × defences, run
concurrently and resumably on the Ray cluster, reported as a table and figures."""

from btard_ray.experiment.grid import CLEAN, Cell, GridConfig, expand, load_grid

__all__ = ["CLEAN", "Cell", "GridConfig", "expand", "load_grid"]
