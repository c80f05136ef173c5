"""The capsmm release (also in pyproject.toml): written into crash logs and checked by run folders."""

__version__ = "0.1.0"
