"""promptgrid: prompt grids to image datasets through a hosted text-to-image prediction API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("promptgrid")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
