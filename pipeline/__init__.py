"""Orchestration: the `mlpl` command line, configs, presets, runtime; `mlpl.load` for library users."""

from mlpl.api import load

__all__ = ["load"]
