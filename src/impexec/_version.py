"""The package version, in a module of its own so that modules inside the package can
import it without importing the package (which imports them)."""

__version__ = "0.1.0"
