"""Orchestration: the `mlpl` command line, configs, presets, runtime."""
