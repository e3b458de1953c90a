"""Image grids, plots and the HTML report."""

from privdiff.report.images import make_grid, save_grid, save_png, to_model_space, to_uint8

__all__ = ["make_grid", "save_grid", "save_png", "to_model_space", "to_uint8"]
