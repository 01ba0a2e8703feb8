"""Greenroom server: app factory, settings, lifecycle, middlewares, CLI."""

__version__ = "0.1.0"
