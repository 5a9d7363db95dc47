"""Bad input as a new user makes it: every case ends in a one-line error naming the thing (or a counted skip),
with the documented exit code, and never in a traceback or a silent wrong result.

Each case builds its input from small generated fixtures shared per module (a tiny COCO layout, a small
prepared digits dataset, an oracle store, a short run), runs `mlpl` in-process and checks the exit code,
that the first line of the message names the file, row or option, and that no traceback is printed.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from PIL import Image

from tests.conftest import run_cli
from tests.prepare_fixtures import shard_bytes, tiny_image
from tests.test_prepare_coco import write_coco

LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING) [\w.]+: ")


def run_mlpl(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlpl ARGS` run in-process; an uncaught exception fails the test."""
    capsys.readouterr()
    code = run_cli([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def first_message_line(err: str) -> str:
    """The first line of the message (log records, which a subprocess's stderr also carries, left out)."""
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert lines, "no message on stderr"
    return lines[0]


def assert_clean_error(result: tuple[int, str, str], code: int, names: str | list[str]) -> str:
    got, out, err = result
    assert "Traceback" not in out + err
    assert got == code, f"exit code {got}, expected {code}; stderr: {err}"
    line = first_message_line(err)
    assert line.startswith("error: "), line
    for name in [names] if isinstance(names, str) else names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


# ----------------------------------------------------------------------------------------------------------
# fixtures shared by the cases

@pytest.fixture(scope="module")
def coco_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine tiny COCO 2014 layout (train ids 9, 10, 100, 25, 3; val 42, 7, 8); copy it before changing it."""
    root = tmp_path_factory.mktemp("coco") / "src"
    write_coco(root)
    return root


@pytest.fixture
def coco(coco_src: Path, tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(coco_src, root)
    return root


def edit_coco_json(root: Path, split: str, fn: Callable[[dict], None]) -> None:
    path = root / "annotations" / f"instances_{split}2014.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def set_file_name(doc: dict, image_id: int, name: str) -> None:
    next(im for im in doc["images"] if im["id"] == image_id)["file_name"] = name


def prepare_coco(root: Path, out: Path, *extra: str) -> list:
    return ["prepare", "--dataset", "coco", "--root", root, "--out", out, "--rows-per-shard", "2", *extra]


# ----------------------------------------------------------------------------------------------------------
# security: nothing received from others reads files outside the folder the user named

@pytest.mark.parametrize("name", ["../../secret.jpg", "ABSOLUTE", "sub/../../secret.jpg", "..\\..\\secret.jpg"])
def test_coco_file_name_outside_the_image_folder_is_refused(coco, tmp_path, capsys, name):
    secret = tmp_path / "secret.jpg"
    tiny_image(secret, seed=99)
    name = str(secret) if name == "ABSOLUTE" else name
    edit_coco_json(coco, "train", lambda d: set_file_name(d, 10, name))
    out = tmp_path / "out"
    line = assert_clean_error(run_mlpl(prepare_coco(coco, out), capsys), 2,
                              ["instances_train2014.json", "image 10", "outside" if name[0] != "." else "leaves"])
    assert "source folder" in line
    assert not out.exists()


def test_symbolic_link_out_of_the_image_folder_is_refused(coco, tmp_path, capsys):
    secret = tmp_path / "secret.jpg"
    tiny_image(secret, seed=99)
    victim = next((coco / "train2014").glob("*000000000010.jpg"))
    victim.unlink()
    victim.symlink_to(secret)
    out = tmp_path / "out"
    assert_clean_error(run_mlpl(prepare_coco(coco, out), capsys), 2, ["image 10", "outside the source folder"])
    assert not out.exists()


def test_formatted_array_path_outside_the_images_folder_is_refused(tmp_path, capsys):
    from tests.test_formatted import write_formatted

    images = tmp_path / "JPEGImages"
    arrays = write_formatted(tmp_path / "fmt", images, n_train=6, n_test=3)
    tiny_image(tmp_path / "secret.jpg", seed=99)
    paths = arrays["formatted_train_images.npy"].copy().astype("<U64")
    paths[4] = "../secret.jpg"
    np.save(tmp_path / "fmt" / "formatted_train_images.npy", paths)
    out = tmp_path / "out"
    result = run_mlpl(["prepare", "--dataset", "voc2012", "--from-formatted", tmp_path / "fmt", "--images", images,
                       "--out", out], capsys)
    assert_clean_error(result, 2, ["formatted_train_images.npy", "row 4", "'../secret.jpg'"])
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# images: decoded completely at prepare time, every mode converted by one rule

def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def test_truncated_jpeg_is_an_error_naming_it(coco, tmp_path, capsys):
    victim = next((coco / "train2014").glob("*000000000100.jpg"))
    victim.write_bytes(truncated_jpeg())
    from PIL import Image as PILImage

    with PILImage.open(victim) as im:
        im.verify()  # what prepare used to check: it passes on a truncated JPEG
    out = tmp_path / "out"
    assert_clean_error(run_mlpl(prepare_coco(coco, out), capsys), 2, [victim.name, "not a decodable image"])
    assert not out.exists()


def test_truncated_jpeg_is_dropped_and_counted_with_skip_corrupt(coco, tmp_path, capsys):
    victim = next((coco / "train2014").glob("*000000000100.jpg"))
    victim.write_bytes(truncated_jpeg())
    out = tmp_path / "out"
    code, stdout, err = run_mlpl(prepare_coco(coco, out, "--skip-corrupt"), capsys)
    assert code == 0 and "Traceback" not in stdout + err
    assert "skipped 1 unreadable images" in stdout
    ds = ds_schema.validate(out)
    assert "100" not in ds.labels.key and ds.meta.source["skipped_corrupt"] == [str(victim.resolve())]


def test_every_image_dropped_is_an_error_not_an_empty_dataset(coco, tmp_path, capsys):
    for path in (coco / "train2014").glob("*.jpg"):
        path.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert_clean_error(run_mlpl(prepare_coco(coco, out, "--skip-corrupt"), capsys), 2,
                       [str(out), "no train image", "4 unreadable images"])
    assert not out.exists()


def test_duplicate_coco_image_ids_are_an_error(coco, tmp_path, capsys):
    def duplicate(doc: dict) -> None:
        doc["images"].append({**doc["images"][0], "file_name": "COCO_train2014_000000000010.jpg"})

    edit_coco_json(coco, "train", duplicate)
    out = tmp_path / "out"
    assert_clean_error(run_mlpl(prepare_coco(coco, out), capsys), 2,
                       ["instances_train2014.json", "image id 9 appears twice"])


def test_sixteen_bit_png_is_scaled_not_clipped():
    from mlpl.schemas.images import decode_rgb

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    rgb = np.asarray(decode_rgb(buf.getvalue()))
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 0], expected)
    assert (rgb == 255).mean() < 0.01  # PIL's own convert("RGB") makes ~99% of these pixels 255


def exif_rotated_jpeg() -> bytes:
    """A JPEG whose EXIF says 'rotate 90° clockwise' (orientation 6): left half dark, right half bright."""
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:, 16:] = 240
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_rule_is_the_same_in_both_stages_and_recorded(coco, tmp_path):
    """EXIF orientation is ignored (pixels as stored) by prepare's check, stage one's views and stage two's
    images alike; prepare counts the images that are not upright in dataset.json."""
    from mlpl.schemas.images import decode_rgb
    from mlpl.stages.pixels import decode_uint8
    from mlpl.stages.precompute.views import ViewCfg, make_views
    from mlpl.stages.train.stream import DecodeImage

    data = exif_rotated_jpeg()
    stored = np.asarray(decode_rgb(data))
    assert stored.shape == (16, 32, 3) and stored[:, :8].mean() < 30 < 200 < stored[:, 24:].mean()
    cfg = ViewCfg(grid=1, overlap=0.0, flip=False, normalize="clip", image_size=32, interpolation="bilinear",
                  weak_aug=False)
    teacher_view = make_views(decode_uint8(data), 0, 0, cfg)[0]
    train_image = next(DecodeImage(32, False, 0)(iter([{"row": 0, "bytes": data}])))["image"]
    for pixels in (teacher_view.float().numpy(), train_image.permute(1, 2, 0).float().numpy()):
        assert pixels[:, :12].mean() < pixels[:, 20:].mean()  # dark left, bright right: not rotated
    victim = next((coco / "train2014").glob("*000000000100.jpg"))
    victim.write_bytes(data)
    out = tmp_path / "out"
    assert run_cli(prepare_coco(coco, out)) == 0
    meta = ds_schema.open_dataset(out).meta
    assert meta.source["exif_orientation"] == {"rule": "ignored", "images_not_upright": 1}
    assert shard_bytes(out)["100"] == data  # original bytes, EXIF included


# ----------------------------------------------------------------------------------------------------------
# a prepared dataset damaged after `mlpl prepare`

TRAIN = ["--method", "an", "--epochs", "1", "--batch-size", "32", "--image-size", "32", "--workers", "0"]


@pytest.fixture(scope="module")
def digits_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine small digits dataset: train 96 rows in 3 shards of 32, val 24, test 30; copy it to break it."""
    out = tmp_path_factory.mktemp("digits") / "ds"
    assert run_cli(["prepare", "--dataset", "digits", "--out", out, "--size", "120", "--test-size", "30",
                    "--rows-per-shard", "32", "--regime", "full", "--regime", "spml"]) == 0
    return out


@pytest.fixture
def digits(digits_src: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(digits_src, root)
    return root


def rewrite_shard(path: Path, fn: Callable[[list[tuple[tarfile.TarInfo, bytes]]], list]) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in fn(members):
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def _delete_shard(root: Path) -> str:
    (root / "shards" / "train-000001.tar").unlink()
    return "train-000001.tar"


def _cut_shard(root: Path) -> str:
    path = root / "shards" / "train-000001.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "train-000001.tar"


def _cut_shard_at_a_member(root: Path) -> str:
    rewrite_shard(root / "shards" / "train-000001.tar", lambda members: members[: len(members) // 2])
    return "train-000001.tar"


def _dotdot_member(root: Path) -> str:
    def rename(members: list) -> list:
        members[0][0].name = "../" + members[0][0].name
        members[1][0].name = "../" + members[1][0].name
        return members

    rewrite_shard(root / "shards" / "train-000001.tar", rename)
    return "../000000032"


def _edited_split_counts(root: Path) -> str:
    meta = json.loads((root / "dataset.json").read_text())
    meta["splits"]["train"] += 5
    (root / "dataset.json").write_text(json.dumps(meta))
    return "dataset.json"


def _labels_of_wrong_type(root: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(root / "labels.parquet")
    index = table.schema.get_field_index("labels")
    as_text = pa.array([",".join(map(str, v)) for v in table.column("labels").to_pylist()])
    pq.write_table(table.set_column(index, "labels", as_text).replace_schema_metadata(table.schema.metadata),
                   root / "labels.parquet")
    return "column 'labels'"


def _edited_labels(root: Path) -> str:
    from mlpl.schemas.dataset import read_labels, write_labels

    table = read_labels(root / "labels.parquet")
    table.labels[3] = np.array([0, 1, 2], dtype=np.int16)
    write_labels(root / "labels.parquet", table)
    return "labels.parquet"


def _renamed_class(root: Path) -> str:
    meta = json.loads((root / "dataset.json").read_text())
    meta["classes"][7] = "sept"
    (root / "dataset.json").write_text(json.dumps(meta))
    return "'sept'"


def _broken_shard_index(root: Path) -> str:
    (root / "shards" / "_info.json").write_text('{"shards": [')
    return "_info.json"


DAMAGED_DATASETS = {
    "deleted shard": _delete_shard,
    "half a shard cut off": _cut_shard,
    "shard cut at a member boundary": _cut_shard_at_a_member,
    "tar member named ../": _dotdot_member,
    "split counts edited in dataset.json": _edited_split_counts,
    "labels column of the wrong type": _labels_of_wrong_type,
    "labels.parquet edited after prepare": _edited_labels,
    "class renamed in dataset.json": _renamed_class,
    "broken shards/_info.json": _broken_shard_index,
}


@pytest.mark.parametrize("damage", DAMAGED_DATASETS, ids=list(DAMAGED_DATASETS))
def test_damaged_dataset_is_refused_by_validate(digits, capsys, damage):
    names = DAMAGED_DATASETS[damage](digits)
    assert_clean_error(run_mlpl(["validate", digits], capsys), 2, names)


@pytest.mark.parametrize("damage", DAMAGED_DATASETS, ids=list(DAMAGED_DATASETS))
def test_damaged_dataset_is_refused_by_train(digits, tmp_path, capsys, damage):
    names = DAMAGED_DATASETS[damage](digits)
    out = tmp_path / "run"
    assert_clean_error(run_mlpl(["train", "--dataset", digits, "--out", out, *TRAIN], capsys), 2, names)
    assert not (out / "summary.json").exists()


# ----------------------------------------------------------------------------------------------------------
# option values checked at the boundary, before any work or write

BAD_TRAIN_OPTIONS = {
    "--lr -1": (["--lr", "-1"], "--lr"),
    "--lr nan": (["--lr", "nan"], "--lr"),
    "--max-batches -3": (["--max-batches", "-3"], "--max-batches"),
    "--epochs 0": (["--epochs", "0"], "--epochs"),
    "--image-size 0": (["--image-size", "0"], "--image-size"),
    "--workers -1": (["--workers", "-1"], "--workers"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size"),
}


@pytest.mark.parametrize("case", BAD_TRAIN_OPTIONS, ids=list(BAD_TRAIN_OPTIONS))
def test_train_option_out_of_range_is_refused_before_any_write(digits_src, tmp_path, capsys, case):
    args, option = BAD_TRAIN_OPTIONS[case]
    out = tmp_path / "run"
    result = run_mlpl(["train", "--dataset", digits_src, "--out", out, *TRAIN, *args], capsys)
    assert_clean_error(result, 2, [option, args[1]])
    assert not out.exists()


def test_evaluate_threshold_out_of_range_is_refused(tmp_path, capsys):
    assert_clean_error(run_mlpl(["evaluate", tmp_path, "--threshold", "2"], capsys), 2, ["--threshold", "≤ 1"])


@pytest.mark.parametrize("args, option", [(["--image-size", "0"], "--image-size"), (["--workers", "-1"], "--workers"),
                                          (["--seeds", "0"], "--seeds"), (["--overlap", "1.5"], "--overlap")])
def test_precompute_option_out_of_range_is_refused_before_any_write(digits_src, tmp_path, capsys, args, option):
    out = tmp_path / "store"
    result = run_mlpl(["precompute-clip", "--dataset", digits_src, "--out", out, *args], capsys)
    assert_clean_error(result, 2, option)
    assert not out.exists()


@pytest.mark.parametrize("command", ["prepare", "precompute-clip", "train"])
@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_that_is_a_file_is_refused_first(digits_src, coco_src, tmp_path, capsys, command, where):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if where == "file" else blocker / "sub"
    args = {
        # the missing --root proves --out is checked before any input is read
        "prepare": ["prepare", "--dataset", "coco", "--root", tmp_path / "no-such-root", "--out", out],
        "precompute-clip": ["precompute-clip", "--dataset", digits_src, "--out", out],
        "train": ["train", "--dataset", digits_src, "--out", out, *TRAIN],
    }[command]
    assert_clean_error(run_mlpl(args, capsys), 2, ["--out", str(blocker)])
    assert blocker.read_text() == "a file"


def test_prepare_checks_an_existing_out_before_reading_inputs(tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    result = run_mlpl(["prepare", "--dataset", "coco", "--root", tmp_path / "no-such-root", "--out", out], capsys)
    assert_clean_error(result, 2, ["--out", "already exists"])


# ----------------------------------------------------------------------------------------------------------
# run folders: nothing in them runs code; damaged files are named

@pytest.fixture(scope="module")
def run_src(digits_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run of 'an' on the small digits dataset; copy it before changing it."""
    out = tmp_path_factory.mktemp("run") / "an"
    assert run_cli(["train", "--dataset", digits_src, "--out", out, *TRAIN]) == 0
    return out


@pytest.fixture
def run_dir(run_src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "an"
    shutil.copytree(run_src, out)
    return out


class _Payload:
    """What a hostile run folder's pickle would do on load: write a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from the run folder ran"))


def test_pickled_last_pt_is_never_loaded(digits_src, run_dir, tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    (run_dir / "summary.json").unlink()  # unfinished, so train resumes from last.pt (a finished run is only reported)
    torch.save({"epoch": 0, "config": {}, "payload": _Payload(marker)}, run_dir / "last.pt")
    result = run_mlpl(["train", "--dataset", digits_src, "--out", run_dir, *TRAIN], capsys)
    assert_clean_error(result, 2, ["last.pt", "pickle"])
    assert not marker.exists()


def test_last_pt_round_trips_without_pickle(tmp_path):
    import pickle
    import random

    import torch
    from mlpl.schemas.state import load_state, save_state

    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}},
             "param_groups": [{"params": [0], "betas": (0.9, 0.999), "foreach": None}]},
             "rng": {"numpy": np.random.get_state(), "python": random.getstate(), "torch": torch.get_rng_state()},
             "history": {"val_map": [1.5, float("nan")], "best_epoch": np.int64(2)}}
    save_state(tmp_path / "last.pt", state)
    raw = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)  # not a pickle at all
    back = load_state(tmp_path / "last.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["optimizer"]["state"][0]["step"].item() == 3.0
    np.random.set_state(back["rng"]["numpy"])
    random.setstate(back["rng"]["python"])
    assert back["history"]["best_epoch"] == 2 and np.isnan(back["history"]["val_map"][1])


def test_truncated_last_pt_is_named(digits_src, run_dir, capsys):
    path = run_dir / "last.pt"
    (run_dir / "summary.json").unlink()  # unfinished, so train resumes from last.pt (a finished run is only reported)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run_mlpl(["train", "--dataset", digits_src, "--out", run_dir, *TRAIN], capsys)
    assert_clean_error(result, 2, ["last.pt", "truncated"])


def test_truncated_best_weights_are_named(run_dir, capsys):
    path = run_dir / "best.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_clean_error(run_mlpl(["evaluate", run_dir], capsys), 2, ["best.safetensors", "truncated"])


def test_broken_last_line_of_metrics_is_named(run_dir, capsys):
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "spl')
    assert_clean_error(run_mlpl(["validate", run_dir], capsys), 2, ["metrics.jsonl:", "cut or edited"])


def test_moved_run_folder_resumes(digits_src, run_dir, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "an"
    shutil.move(run_dir, moved)
    code, out, err = run_mlpl(["train", "--dataset", digits_src, "--out", moved, *TRAIN], capsys)
    assert code == 0 and "Traceback" not in out + err, err


def test_run_with_other_settings_names_them(digits_src, run_dir, capsys):
    result = run_mlpl(["train", "--dataset", digits_src, "--out", run_dir, *TRAIN, "--lr", "0.5"], capsys)
    # the run record is checked before last.pt is read: the differing keys are named, nothing is touched
    assert_clean_error(result, 2, ["another configuration", "lr (0.001 → 0.5)", "nothing was changed"])


# ----------------------------------------------------------------------------------------------------------
# stores: damaged or edited chunks found by `validate`, redone by a rerun

PRECOMPUTE = ["--seeds", "1", "--batch-size", "32", "--workers", "0", "--model", "digits"]


@pytest.fixture(scope="module")
def store_src(digits_src: Path, tmp_path_factory: pytest.TempPathFactory, teacher_cache: Path) -> Iterator[Path]:
    """A store of the digits teacher over the small digits dataset (1 seed, 3 chunks); copy it to break it.
    The teacher's cache stays set for the module's tests (a rerun of precompute-clip needs it)."""
    out = tmp_path_factory.mktemp("store") / "store"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPL_CACHE", str(teacher_cache))
        assert run_cli(["precompute-clip", "--dataset", digits_src, "--out", out, *PRECOMPUTE]) == 0
        yield out


@pytest.fixture
def store(store_src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(store_src, out)
    return out


def chunk_file(store: Path, seed: int, chunk: int) -> Path:
    return store / "sims" / "c" / str(seed) / str(chunk) / "0" / "0"


def test_damaged_store_chunk_is_found_and_redone(digits_src, store, capsys):
    from mlpl.schemas.store import open_store

    clean = open_store(store).read_chunk(0, 1).copy()
    chunk_file(store, 0, 1).write_bytes(np.random.RandomState(0).bytes(500))
    assert_clean_error(run_mlpl(["validate", store], capsys), 2, [str(store), "seed 0 chunk 1", "does not decode"])
    assert open_store(store).done_matrix().tolist() == [[True, False, True]]
    assert run_cli(["precompute-clip", "--dataset", digits_src, "--out", store, *PRECOMPUTE]) == 0
    np.testing.assert_array_equal(open_store(store).read_chunk(0, 1), clean)
    assert run_cli(["validate", store]) == 0


def test_edited_similarities_are_found(store, capsys):
    import zarr

    sims = zarr.open_group(str(store), mode="r+")["sims"]
    sims[0, 40, 0, 3] = np.float16(0.99)
    assert_clean_error(run_mlpl(["validate", store], capsys), 2, ["seed 0 chunk 1", "checksum differs"])


def test_nan_rows_not_listed_as_corrupt_are_found(store, capsys):
    import zarr

    sims = zarr.open_group(str(store), mode="r+")["sims"]
    sims[0, 70, 2, :] = np.nan  # one view of one row
    from mlpl.schemas.store import chunk_checksum, open_store

    opened = open_store(store, mode="r+")
    opened.group["checksums"][0, 2] = np.uint64(chunk_checksum(opened.read_chunk(0, 2)))  # as if written so
    assert_clean_error(run_mlpl(["validate", store], capsys), 2, ["rows [70]", "not listed in corrupt_rows"])


def test_broken_zarr_json_is_named(digits_src, store, tmp_path, capsys):
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    assert_clean_error(run_mlpl(["validate", store], capsys), 2, "zarr.json")
    result = run_mlpl(["train", "--dataset", digits_src, "--out", tmp_path / "run", *TRAIN, "--method", "aevlp",
                       "--pseudo-store", store], capsys)
    assert_clean_error(result, 2, "zarr.json")


def test_renamed_class_is_named(digits, store_src, tmp_path, capsys):
    from mlpl.schemas.dataset import read_labels, write_labels

    meta = json.loads((digits / "dataset.json").read_text())
    meta["classes"][7] = "sept"
    (digits / "dataset.json").write_text(json.dumps(meta))
    table = read_labels(digits / "labels.parquet")
    renamed = ds_schema.LabelsTable(**{**table.__dict__, "classes": tuple(meta["classes"])})
    write_labels(digits / "labels.parquet", renamed)
    result = run_mlpl(["train", "--dataset", digits, "--out", tmp_path / "run", *TRAIN, "--method", "aevlp",
                       "--pseudo-store", store_src], capsys)
    assert_clean_error(result, 2, ["store 'seven', dataset 'sept'"])


def test_damaged_chunk_in_training_is_named(digits_src, store, tmp_path, capsys):
    chunk_file(store, 0, 2).write_bytes(b"\x00" * 64)
    result = run_mlpl(["train", "--dataset", digits_src, "--out", tmp_path / "run", *TRAIN, "--method", "aevlp",
                       "--pseudo-store", store], capsys)
    assert_clean_error(result, 2, [str(store), "chunk 2 does not decode", "mlpl validate"])


def test_nan_views_and_few_seeds_are_counted_and_said(digits_src, store, tmp_path, caplog):
    import zarr

    zarr.open_group(str(store), mode="r+")["sims"][0, 5, 1, :] = np.nan
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert run_cli(["train", "--dataset", digits_src, "--out", out, *TRAIN, "--method", "aevlp",
                        "--epochs", "2", "--pseudo-store", store]) == 0
    assert any("1 augment seed(s) for 2 epochs" in r.getMessage() for r in caplog.records)
    train = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert [r["sims_nan_rows"] for r in train] == [1, 1] and [r["sims_nan_views"] for r in train] == [1, 1]


def test_precompute_seeds_default_to_the_family_epochs(digits_src, tmp_path):
    from mlpl.config import default_seeds, resolve_train_cfg

    meta = ds_schema.open_dataset(digits_src).meta
    assert default_seeds(meta) == resolve_train_cfg("aevlp", "-", meta.name, "-").epochs > 1


# ----------------------------------------------------------------------------------------------------------
# the environment fails: a full disk is one line naming the file, exit 1, and a rerun continues

def run_with_file_size_limit(args: list, limit: int) -> tuple[int, str, str]:
    """`mlpl ARGS` in a subprocess that may write no file larger than `limit` bytes (a full disk, as the
    writer sees it: SIGXFSZ ignored, so the write fails with EFBIG)."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "mlpl.cli", *map(str, args)], preexec_fn=limited,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout, proc.stderr


def test_disk_full_during_prepare(tmp_path):
    out = tmp_path / "ds"
    args = ["prepare", "--dataset", "digits", "--out", out, "--size", "120", "--test-size", "30",
            "--rows-per-shard", "32"]
    assert_clean_error(run_with_file_size_limit(args, 20_000), 1, ["train-000000.tar", "File too large"])
    assert not out.exists() and not list(tmp_path.glob(".ds.*"))  # nothing half-written is left
    assert run_cli(args) == 0


def test_disk_full_during_precompute_then_resume(digits_src, store_src, tmp_path, teacher_cache, monkeypatch):
    from mlpl.schemas.store import open_store

    monkeypatch.setenv("MLPL_CACHE", str(teacher_cache))
    out = tmp_path / "store"
    args = ["precompute-clip", "--dataset", digits_src, "--out", out, *PRECOMPUTE]
    assert_clean_error(run_with_file_size_limit(args, 3_000), 1, [str(out), "File too large"])
    assert not open_store(out).is_complete()
    assert run_cli(args) == 0
    np.testing.assert_array_equal(np.asarray(open_store(out).sims[...]), np.asarray(open_store(store_src).sims[...]))


def test_disk_full_during_train_then_resume(digits_src, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", digits_src, "--out", out, *TRAIN]
    assert_clean_error(run_with_file_size_limit(args, 20_000), 1, [str(out), "File too large"])
    assert not (out / "summary.json").exists()
    assert run_cli(args) == 0


def _garble_image(root: Path, row: int) -> None:
    ds = ds_schema.open_dataset(root)
    shard = next(s for s in ds.shards if s.first_row <= row < s.first_row + s.num_samples)

    def garble(members: list) -> list:
        return [(m, b"\x89PNG not really an image" if m.name == f"{row:09d}.png" else data) for m, data in members]

    rewrite_shard(root / "shards" / shard.name, garble)


def test_undecodable_images_are_counted_and_never_replaced(digits, tmp_path):
    """A corrupt train image is skipped and counted per epoch; a corrupt val image is counted in the metrics and
    the summary, which are computed over the rows actually read (no other sample stands in for it)."""
    _garble_image(digits, 10)  # train
    _garble_image(digits, 100)  # val (rows 96..119)
    out = tmp_path / "run"
    assert run_cli(["train", "--dataset", digits, "--out", out, *TRAIN]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_split = {r["split"]: r for r in records}
    assert by_split["train"]["undecodable_images"] == 1 and by_split["val"]["skipped_images"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_images"] == {"train": 1, "val": 1, "test": 0}
    assert summary["val"]["extra"]["skipped_images"] == 1
    predictions = np.load(out / "predictions-test.npz")
    assert predictions["rows"].tolist() == list(range(120, 150))  # every test row once, none repeated


@pytest.mark.parametrize("damage", ["deleted shard", "half a shard cut off", "tar member named ../"])
def test_damaged_dataset_is_refused_by_precompute(digits, store_src, tmp_path, capsys, damage):
    names = DAMAGED_DATASETS[damage](digits)
    out = tmp_path / "store"
    result = run_mlpl(["precompute-clip", "--dataset", digits, "--out", out, *PRECOMPUTE], capsys)
    assert_clean_error(result, 2, names)


# ----------------------------------------------------------------------------------------------------------
# weights files that only load with pickle are refused, not run

def test_backbone_weights_that_need_pickle_are_refused(digits_src, tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": _Payload(marker)}, weights)
    result = run_mlpl(["train", "--dataset", digits_src, "--out", tmp_path / "run", *TRAIN, "--backbone", "resnet18",
                       "--backbone-weights", weights], capsys)
    assert_clean_error(result, 2, [str(weights), "without running code"])
    assert not marker.exists()


def test_teacher_weights_that_need_pickle_are_refused(digits_src, tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    weights = tmp_path / "teacher.pt"
    torch.save({"state_dict": _Payload(marker)}, weights)
    result = run_mlpl(["precompute-clip", "--dataset", digits_src, "--out", tmp_path / "store", "--model", "RN50",
                       "--pretrained", weights, "--workers", "0"], capsys)
    assert_clean_error(result, 2, [str(weights)])
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# what killed or concurrent runs leave behind

def test_temporary_folders_of_killed_runs_are_removed(tmp_path):
    import os

    from mlpl.schemas.tempdirs import make_temp_beside

    out = tmp_path / "S"
    old_form = tmp_path / ".S.k2j3h4g5"  # what a killed run of an older version left (8 KB of zarr.json)
    dead = tmp_path / ".S.999999999.abcd1234"  # no process has this id
    alive = tmp_path / f".S.{os.getppid()}.abcd1234"  # a run that is still going
    users = tmp_path / ".S.backup"  # not a temporary folder at all
    for folder in (old_form, dead, alive, users):
        folder.mkdir()
    tmp = make_temp_beside(out)
    assert not old_form.exists() and not dead.exists() and alive.exists() and users.exists() and tmp.is_dir()


def test_two_precomputes_on_one_new_out_the_loser_is_told(digits_src, tmp_path, monkeypatch):
    import mlpl.stages.precompute.store_writer as writer
    from mlpl.schemas.errors import InputError
    from mlpl.schemas.store import StoreAttrs

    attrs = StoreAttrs(dataset_fingerprint="f", dataset_name="d", classes=("a", "b"), num_rows=4,
                       rows_per_chunk=2, seeds=(0,), teacher={}, views={"grid": 1}, embed_dim=3)
    out = tmp_path / "store"
    create = writer.create_store

    def the_other_run_wins(path: Path, *args):  # the other run renames its store onto `out` meanwhile
        create(out, *args)
        return create(path, *args)

    monkeypatch.setattr(writer, "create_store", the_other_run_wins)
    with pytest.raises(InputError, match="another `mlpl precompute-clip` created this store at the same time"):
        writer.open_or_create_store(out, attrs, np.zeros((2, 3), np.float32))
    assert (out / "zarr.json").exists() and [p.name for p in tmp_path.iterdir()] == ["store"]


# ----------------------------------------------------------------------------------------------------------
# read-only output folders (the tests run as root, for whom no folder is read-only: the file system's answer
# is played by os.access and os.replace for the one folder)

def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    import errno
    import os

    access, replace = os.access, os.replace

    def inside(path: object) -> bool:
        return Path(str(path)).resolve().is_relative_to(folder.resolve())

    def no_write_access(path: object, mode: int, **kw: object) -> bool:
        return False if inside(path) and mode & os.W_OK else access(path, mode, **kw)

    def read_only_replace(src: object, dst: object, **kw: object) -> None:
        if inside(dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        replace(src, dst, **kw)

    monkeypatch.setattr(os, "access", no_write_access)
    monkeypatch.setattr(os, "replace", read_only_replace)


@pytest.mark.parametrize("command", ["prepare", "precompute-clip", "train"])
def test_read_only_out_is_refused_before_any_work(digits_src, tmp_path, capsys, monkeypatch, command):
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "new"
    args = {"prepare": ["prepare", "--dataset", "digits", "--out", out, "--size", "120"],
            "precompute-clip": ["precompute-clip", "--dataset", digits_src, "--out", out],
            "train": ["train", "--dataset", digits_src, "--out", out, *TRAIN]}[command]
    _read_only(monkeypatch, folder)
    assert_clean_error(run_mlpl(args, capsys), 2, ["--out", str(folder), "not writable"])
    assert not out.exists()


def test_read_only_dataset_folder_for_observe(digits, capsys, monkeypatch):
    _read_only(monkeypatch, digits)
    result = run_mlpl(["observe", digits, "--regime", "partial-0.3"], capsys)
    assert_clean_error(result, 1, [str(digits), "Read-only file system", "rerun"])


def test_read_only_run_folder_for_evaluate(run_dir, capsys, monkeypatch):
    _read_only(monkeypatch, run_dir)
    assert_clean_error(run_mlpl(["evaluate", run_dir], capsys), 1, [str(run_dir / "eval-test.json"), "Read-only"])


def test_error_in_a_dataloader_worker_is_one_line(digits, tmp_path, capsys):
    """An error raised in a worker process reaches the user as its own line, not the worker's traceback."""
    _dotdot_member(digits)
    result = run_mlpl(["train", "--dataset", digits, "--out", tmp_path / "run", *TRAIN, "--workers", "1"], capsys)
    line = assert_clean_error(result, 2, ["train-000001.tar", "../000000032"])
    assert "Caught" not in line and "worker" not in line


def test_a_state_whose_header_length_starts_like_a_pickle_still_loads(tmp_path):
    """A safetensors file starts with its header's length (8 bytes, little endian): a length whose low byte is
    0x80 (a pickle's first byte) must not be mistaken for a pickle."""
    import torch
    from mlpl.schemas.state import load_state, save_state

    for pad in range(300):  # grow the JSON header one byte at a time until its length's low byte matches
        state = {"w": torch.zeros(2), "note": "x" * pad}
        save_state(tmp_path / "last.pt", state)
        if (tmp_path / "last.pt").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "last.pt").read_bytes()[0] == 0x80  # 256 consecutive lengths hit every low byte
    assert load_state(tmp_path / "last.pt")["note"] == "x" * pad
