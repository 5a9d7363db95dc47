"""Bad input as a new user makes it: every case ends in a one-line error naming the thing (or a counted skip),
with the documented exit code, and never in a traceback or a silent wrong result.

Each case builds its input from small generated fixtures shared per module (a tiny COCO layout, a small
prepared digits dataset, an oracle store, a short run), runs `mlpl` in-process and checks the exit code,
that the first line of the message names the file, row or option, and that no traceback is printed.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlpl.schemas import dataset as ds_schema
from PIL import Image

from tests.conftest import run_cli
from tests.prepare_fixtures import shard_bytes, tiny_image
from tests.test_prepare_coco import write_coco


def run_mlpl(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlpl ARGS` run in-process; an uncaught exception fails the test."""
    capsys.readouterr()
    code = run_cli([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def first_message_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
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
    from mlpl.stages.precompute.run import _decode
    from mlpl.stages.precompute.views import ViewCfg, make_views
    from mlpl.stages.train.stream import DecodeImage

    data = exif_rotated_jpeg()
    stored = np.asarray(decode_rgb(data))
    assert stored.shape == (16, 32, 3) and stored[:, :8].mean() < 30 < 200 < stored[:, 24:].mean()
    cfg = ViewCfg(grid=1, overlap=0.0, flip=False, normalize="clip", image_size=32, interpolation="bilinear",
                  weak_aug=False)
    teacher_view = make_views(_decode(data), 0, 0, cfg)[0]
    train_image = next(DecodeImage(32, False, 0)(iter([{"row": 0, "bytes": data}])))["image"]
    for pixels in (teacher_view.astype(np.float32), train_image.permute(1, 2, 0).numpy()):
        assert pixels[:, :12].mean() < pixels[:, 20:].mean()  # dark left, bright right: not rotated
    victim = next((coco / "train2014").glob("*000000000100.jpg"))
    victim.write_bytes(data)
    out = tmp_path / "out"
    assert run_cli(prepare_coco(coco, out)) == 0
    meta = ds_schema.open_dataset(out).meta
    assert meta.source["exif_orientation"] == {"rule": "ignored", "images_not_upright": 1}
    assert shard_bytes(out)["100"] == data  # original bytes, EXIF included


