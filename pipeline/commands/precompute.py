"""`mlpl precompute-clip`, `mlpl inspect`, `mlpl teacher ...`: stage one (teacher similarities into the store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from mlpl import steps
from mlpl.app import app
from mlpl.config import default_seeds
from mlpl.errors import check_out_folder
from mlpl.schemas.errors import check_range

teacher_app = typer.Typer(help="Built-in teachers: list them, fit one explicitly.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")


@app.command("precompute-clip")
def precompute_clip(
    dataset: Annotated[str, typer.Option(help="Prepared dataset folder, or its name under --data-root.")],
    out: Annotated[Path, typer.Option(help="Store folder: created, or resumed if it exists with the same settings.")],
    seeds: Annotated[int | None, typer.Option(
        help="Augment seeds S (seeds 0..S-1; one per training epoch; default: the epochs of the dataset "
             "family's default method, so dynamic pseudo-labels see a new seed every epoch).")] = None,
    grid: Annotated[int | None, typer.Option(
        help="Tiles per side g (default: the dataset family's: 4, CUB 5, digits 3).")] = None,
    overlap: Annotated[float, typer.Option(help="r_max: tile overlap r ~ U(0, r_max) per tile and axis.")] = 0.2,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flip per view.")] = True,
    normalize: Annotated[str, typer.Option(help="View normalisation: clip or imagenet.")] = "clip",
    image_size: Annotated[int | None, typer.Option(help="View side (default: the teacher's input).")] = None,
    interpolation: Annotated[
        str | None, typer.Option(help="Resize filter: bicubic, bilinear, nearest (default: the teacher's).")
    ] = None,
    weak_aug: Annotated[bool, typer.Option("--weak-aug/--no-weak-aug", help="Weak augmentation T(·).")] = False,
    model: Annotated[
        str | None, typer.Option(help="open_clip model name, local-dir:PATH, or 'digits' (default: digits for "
                                         "the digits world, else ViT-B-16).")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="open_clip tag (default openai), weights file, model folder, or 'random'.")
    ] = None,
    prompt_template: Annotated[
        str | None, typer.Option(help="Prompt per class with {name} (default 'a photo of a {name}.').")
    ] = None,
    text_noise: Annotated[
        bool, typer.Option("--text-noise/--no-text-noise", help="Text-embedding noise G(·) (docs/methods.md §4.2).")
    ] = False,
    noise_topk: Annotated[int | None, typer.Option(help="G(·) adjacency top-k (default: the family's).")] = None,
    noise_seed: Annotated[int, typer.Option(help="Seed of G(·)'s weights.")] = 0,
    keep_embeddings: Annotated[bool, typer.Option(help="Also store the image embeddings (img_emb).")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per teacher forward (each gives 1 + g² views).")] = 32,
    workers: Annotated[str | None, typer.Option(
        help="DataLoader workers: a count, or 'auto' (this process's cores minus one; the default with a GPU "
             "teacher, else spare cores, ≤ 4).")] = None,
    precision: Annotated[str, typer.Option(help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16.")] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if available).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="open_clip download cache (default: its own).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Where named datasets live.")] = None,
) -> None:
    """Run the teacher over the global view and g×g tiles of every train image, for every augment seed."""
    steps.prefer_passive_openmp()
    from mlpl.schemas.dataset import DatasetMeta
    from mlpl.stages.precompute.run import PrecomputeCfg
    from mlpl.stages.precompute.teacher import TeacherCfg, default_teacher_for
    from mlpl.stages.runtime import resolve_workers

    check_out_folder(out)
    if seeds is not None:
        check_range("seeds", seeds, ge=1)
    ds_dir = steps.resolve_dataset_dir(dataset, data_root)
    meta = DatasetMeta.from_json(ds_dir / "dataset.json")
    if seeds is None:
        seeds = default_seeds(meta)
    teacher = TeacherCfg(
        model=model or default_teacher_for(meta.name), pretrained=pretrained, prompt_template=prompt_template,
        precision=precision, device=device, cache_dir=str(cache_dir) if cache_dir else None,
    )
    cfg = PrecomputeCfg(
        dataset=ds_dir, out=out, seeds=tuple(range(seeds)), teacher=teacher, grid=grid, overlap=overlap, flip=flip,
        normalize=normalize, image_size=image_size, interpolation=interpolation, weak_aug=weak_aug,
        noise=text_noise, noise_topk=noise_topk, noise_seed=noise_seed, batch_size=batch_size,
        workers=steps.default_workers(device) if workers is None else resolve_workers(workers),
        keep_embeddings=keep_embeddings,
    )
    for line in steps.precompute(cfg):
        typer.echo(line)


@app.command("inspect")
def inspect_store(
    store: Annotated[Path, typer.Argument(help="A pseudo-label store from `mlpl precompute-clip`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON summary.")] = False,
) -> None:
    """Print a store's attributes, completion and size."""
    from mlpl.schemas.store import describe, open_store

    summary = describe(open_store(store))
    if not as_json:
        a, done = summary["attributes"], summary["completion"]
        teacher, views = a["teacher"], a["views"]
        weights = teacher.get("weights", {})
        typer.echo(f"store      {summary['path']}")
        weights_name = weights.get("tag") or weights.get("file") or weights.get("kind")
        typer.echo(f"dataset    {a['dataset_name']} (fingerprint {a['dataset_fingerprint']}), "
                   f"{a['num_rows']} train rows, {len(a['classes'])} classes")
        typer.echo(f"teacher    {teacher.get('model')} weights {weights_name} {weights.get('sha256', '')[:16]} "
                   f"precision {teacher.get('precision')}")
        typer.echo(f"views      grid {views['grid']} (V = {1 + views['grid'] ** 2}), overlap {views['overlap']}, "
                   f"flip {views['flip']}, {views['normalize']}, {views['image_size']} px, "
                   f"weak-aug {views['weak_aug']}")
        typer.echo(f"seeds      {a['seeds']}")
        pct = 100.0 * done["done_tasks"] / max(1, done["total_tasks"])
        typer.echo(f"completion {done['done_tasks']}/{done['total_tasks']} tasks ({pct:.0f}%), "
                   f"{summary['corrupt_rows']} corrupt rows")
        typer.echo(f"size       {summary['size_bytes'] / 2**20:.2f} MiB")
    typer.echo(json.dumps(summary, indent=2))


@teacher_app.command("list")
def teacher_list(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on model names, e.g. 'ViT-L-*'.")] = "*",
    cached: Annotated[bool, typer.Option("--cached", help="Only weights present in the local cache.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="open_clip download cache (default: its own).")] = None,
) -> None:
    """List the built-in teachers and open_clip's models and tags, marking the weights in the local cache."""
    from mlpl.stages.precompute.teacher import TEACHERS, list_teacher_weights

    for info in TEACHERS:
        typer.echo(f"{info.name:36s} {'(built in)':40s} {info.description}")
    rows = list_teacher_weights(pattern, str(cache_dir) if cache_dir else None)
    for model, tag, path in rows:
        if path or not cached:
            typer.echo(f"{model:36s} {tag or '-':40s} {'cached ' + path if path else 'not cached'}")
    typer.echo(f"{sum(1 for *_, p in rows if p)} of {len(rows)} open_clip weights cached. Use --model MODEL "
               "--pretrained TAG, or --model hf-hub:ORG/NAME for an open_clip repository on the Hugging Face hub")


@teacher_app.command("fit")
def teacher_fit(
    name: Annotated[str, typer.Argument(help="A built-in teacher (see `mlpl teacher list`).")],
    force: Annotated[bool, typer.Option(help="Fit again even if it is cached.")] = False,
) -> None:
    """Fit a built-in teacher now and cache it (otherwise it is fitted on first use)."""
    from mlpl.stages.precompute import digits_teacher
    from mlpl.stages.precompute.teacher import TEACHERS

    TEACHERS.get(name, option="teacher fit")
    folder = digits_teacher.ensure_digits_teacher(force=force)
    metrics = digits_teacher.read_metrics(folder)
    typer.echo(
        f"{name} teacher: zero-shot accuracy {metrics['zero_shot_accuracy']:.3f} on held-out single digits "
        f"(fitted in {metrics['fit_seconds']:.0f} s) → {folder}"
    )
