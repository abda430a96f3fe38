"""The package version, in the bottom layer so every layer can record it without importing upward."""

__version__ = "0.1.0"
