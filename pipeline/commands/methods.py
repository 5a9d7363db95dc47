"""`mlpl methods`: every registered method with its description, reference and per-dataset defaults."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from mlpl.app import app
from mlpl.schemas.errors import InputError


def _params(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in d.items()) or "-"


@app.command()
def methods(
    pattern: Annotated[str, typer.Argument(help="A method name or a shell-style pattern (e.g. 'll-*').")] = "*",
    dataset: Annotated[str | None, typer.Option(
        help="Show the settings of this hyperparameter family only (an unknown name lists them).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """List the methods (`--method` of `mlpl train`): what each binds and its defaults per dataset family.

    With no pattern, one line per method; with a name or pattern, the full resolved settings of each: the
    training settings and the typed configs of its loss, pseudo-labeller and label state.
    """
    from mlpl.config import describe_method, list_methods_matching
    from mlpl.stages.families import get_family_info

    if dataset is not None:
        get_family_info(dataset, option="--dataset")  # an unknown family lists the known ones
    names = list_methods_matching(pattern)
    if not names:
        raise InputError(f"no method matches {pattern!r}; `mlpl methods` lists them all")
    described = [describe_method(name, families=None if dataset is None else (dataset,)) for name in names]
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    width = max(len(n) for n in names)
    for d in described:
        parts = [f"loss={d['loss']}", f"pseudo={d['pseudo']}"]
        parts += [f"{k}={d[k]}" for k, none in (("label_state", "none"), ("head", "linear")) if d[k] != none]
        typer.echo(f"{d['name']:<{width}}  {d['description']}")
        typer.echo(f"{'':<{width}}  {' '.join(parts)}  [{d['reference']}]")
        if pattern == "*" and dataset is None:
            continue
        for family, s in d["families"].items():
            train = {k: v for k, v in s.items() if not k.endswith("_params")}
            typer.echo(f"{'':<{width}}  {family}: {_params(train)}")
            for key in ("loss_params", "pseudo_params", "label_state_params", "head_params"):
                if s[key]:
                    typer.echo(f"{'':<{width}}    {key.removesuffix('_params')}: {_params(s[key])}")
