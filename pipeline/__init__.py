"""mlpl: multi-label classification from scarce labels with cached vision-language pseudo-labels.

The package holds the `mlpl` command line, configs and presets; library users call the public API
(`mlpl.api`), whose names are re-exported here lazily: `import mlpl` loads neither torch nor any stage.
"""

from __future__ import annotations

from typing import Any

_API = ("Loss", "PseudoLabeller", "create_loss", "create_pseudolabeller", "evaluate", "list_families",
        "list_losses", "list_pseudolabellers", "load", "mean_average_precision", "read_run")

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        from mlpl import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlpl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
