"""Bad input: each case is either converted correctly or stopped early with an error naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mstl_utils.core import config
from mstl_utils import data
from mstl_utils.data import images, synthetic
from mstl_utils.engine import lifecycle
from mstl_utils.engine.spec import RunSpec
from mstl_utils.data import DataFormatError, DataNotFoundError


@pytest.fixture(autouse=True)
def no_real_data(monkeypatch):
    """Only the folders a test names are searched (CI sets MSTL_DATA_DIR to the real data)."""
    monkeypatch.delenv("MSTL_DATA_DIR", raising=False)


@pytest.fixture
def head_ct(tmp_path) -> Path:
    """A fresh, writable synthetic head-CT folder (Kaggle layout) per test."""
    return synthetic.make_head_ct(tmp_path / "head_ct", n_per_class=4)


def _labels(root: Path) -> Path:
    return root / "labels.csv"


def _image_dir(root: Path) -> Path:
    return next(p.parent for p in root.rglob("000.png"))


def _read(root: Path):
    return data.read_table(data.locate("head_ct", data="real", data_dir=root.parent, download=False))


# ----------------------------------------------------------------- finding the folder


def test_missing_folder_says_it_does_not_exist(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.locate("head_ct", data="real", data_dir=tmp_path / "nowhere", download=False)


def test_folder_one_level_too_high_is_found(head_ct, tmp_path):
    nested = tmp_path / "downloads" / "archive"
    shutil.move(str(head_ct), nested / "head_ct")
    assert data.locate("head_ct", data="real", data_dir=tmp_path / "downloads", download=False).root == nested / "head_ct"


def test_folder_one_level_too_low_points_at_the_right_one(head_ct):
    with pytest.raises(DataNotFoundError, match=f"point at {head_ct}"):
        data.locate("head_ct", data="real", data_dir=head_ct / "head_ct", download=False)


def test_missing_labels_csv_is_named(head_ct):
    _labels(head_ct).unlink()
    with pytest.raises(DataNotFoundError, match="has head_ct/ but no labels.csv"):
        data.locate("head_ct", data="real", data_dir=head_ct.parent, download=False)


def test_chest_xray_missing_class_folder_is_named(tmp_path):
    root = synthetic.make_chest_xray(tmp_path / "chest_xray", n_per_class={"train": 2, "val": 1, "test": 2}) / "chest_xray"
    shutil.rmtree(root / "train" / "NORMAL")
    with pytest.raises(DataNotFoundError, match="lacks train/NORMAL"):
        data.locate("chest_xray", data="real", data_dir=tmp_path, download=False)


def test_chest_xray_empty_class_folder_is_named(tmp_path):
    root = synthetic.make_chest_xray(tmp_path / "chest_xray", n_per_class={"train": 2, "val": 1, "test": 2}) / "chest_xray"
    for file in (root / "test" / "NORMAL").iterdir():
        file.unlink()
    with pytest.raises(DataFormatError, match=r"test/NORMAL: no images"):
        data.read_table(data.locate("chest_xray", data="real", data_dir=tmp_path, download=False))


def test_image_folder_with_a_single_class_or_an_empty_class(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
    Image.new("L", (40, 40)).save(tmp_path / "set" / "a" / "x.png")
    with pytest.raises(DataFormatError, match=r"set/b: no images"):
        data.read_table(data.locate(str(tmp_path / "set")))
    shutil.rmtree(tmp_path / "set" / "b")
    with pytest.raises(DataFormatError, match="needs >= 2 class folders"):
        data.read_table(data.locate(str(tmp_path / "set")))


# ----------------------------------------------------------------- labels.csv


def test_header_case_and_spaces_do_not_matter(head_ct):
    text = _labels(head_ct).read_text().splitlines()
    _labels(head_ct).write_text("\n".join([" ID ,Hemorrhage"] + text[1:]) + "\n")
    table, _ = _read(head_ct)
    assert len(table) == 8 and table["group"].iloc[0] == "000"


@pytest.mark.parametrize("content, message", [
    ("id,label\n0,1\n", r"header is \['id', 'label'\]; expected 'id, hemorrhage'"),
    ("", "cannot be read as CSV"),
    ("id, hemorrhage\n", "no rows"),
    ("id, hemorrhage\nabc,1\n", r"ids must be whole numbers \(bad: 'abc'\)"),
    ("id, hemorrhage\n0,1\n000,1\n", "duplicate ids 000"),
    ("id, hemorrhage\n0,2\n1,yes\n", r"hemorrhage must be 0 or 1 \(bad ids: 0='2', 1='yes'\)"),
    ("id, hemorrhage\n0,1\n1,1\n99,0\n", "lists id.* 099, but .* has no image"),
])
def test_bad_labels_csv_is_a_clear_error(head_ct, content, message):
    _labels(head_ct).write_text(content)
    with pytest.raises(DataFormatError, match=message) as error:
        _read(head_ct)
    assert "labels.csv" in str(error.value)


def test_images_without_labels_are_named(head_ct):
    _labels(head_ct).write_text("id, hemorrhage\n0,1\n1,1\n")
    with pytest.raises(DataFormatError, match=r"image\(s\) 002.png, .* have no row in"):
        _read(head_ct)


def test_upper_case_extensions_are_read(head_ct):
    for file in _image_dir(head_ct).glob("*.png"):
        file.rename(file.with_suffix(".PNG"))
    table, _ = _read(head_ct)
    assert table["path"].str.endswith(".PNG").all()
    assert data.load_image(table["path"].iloc[0], 32).shape == (32, 32)


# ----------------------------------------------------------------- image files


def _save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    array = np.full((40, 40), 32896, dtype=np.uint16)  # 32896 / 65535 * 255 = 128
    array[:20] = 65535
    path = _save(tmp_path, "deep.png", Image.fromarray(array))
    grey, info = images.open_grey(path)
    assert info.bits == 16 and "scaled" in info.conversion
    assert np.asarray(grey)[0, 0] == 255 and np.asarray(grey)[-1, -1] == 128


def test_palette_la_rgba_cmyk_and_bilevel_become_grey(tmp_path):
    rgb = Image.merge("RGB", [Image.new("L", (40, 40), v) for v in (200, 100, 50)])
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    cases = {
        "palette.png": (rgb.convert("P"), {}),
        "cmyk.jpg": (rgb.convert("CMYK"), {"quality": 100}),
        "rgba.png": (rgb.convert("RGBA"), {}),
    }
    for name, (image, kwargs) in cases.items():
        grey, info = images.open_grey(_save(tmp_path, name, image, **kwargs))
        assert grey.mode == "L" and abs(int(np.asarray(grey).mean()) - expected) <= 3, name
    la = Image.merge("LA", [Image.new("L", (40, 40), 200), Image.new("L", (40, 40), 0)])  # fully transparent
    grey, info = images.open_grey(_save(tmp_path, "la.png", la))
    assert np.asarray(grey).max() == 0 and "alpha over black" in info.conversion
    grey, _ = images.open_grey(_save(tmp_path, "bilevel.png", Image.new("1", (40, 40), 1)))
    assert np.asarray(grey).min() == 255


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"this is a text file, not a picture"), "not an image PIL can identify"),
    (lambda p: p.write_bytes(Path(p.with_name("good.png")).read_bytes()[:300]), "truncated or corrupt"),
    (lambda p: Image.new("L", (20, 60)).save(p, format="PNG"), "20x60 pixels; expected at least 32"),
])
def test_unreadable_or_too_small_images_are_named(tmp_path, make, message):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    make(bad)
    with pytest.raises(DataFormatError, match=message) as error:
        data.load_images([str(tmp_path / "good.png"), str(bad)], 32)
    assert str(bad) in str(error.value)


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 50 * 50)
    path = _save(tmp_path, "huge.png", Image.new("L", (60, 60)))
    with pytest.raises(DataFormatError, match=r"huge.png: 60x60 pixels is more than the 2500 accepted"):
        images.open_grey(path)


def test_too_few_images_for_the_splits_is_a_clear_error(head_ct):
    table, _ = _read(head_ct)
    with pytest.raises(DataFormatError, match=r"\{1: 4, 0: 1\} images per label cannot be split"):
        data.assign_parts(table.iloc[:5], test_fraction=0.2, val_fraction=0.2, seed=0)
    with pytest.raises(DataFormatError, match=r"at least 5 per class are needed"):
        data.assign_parts(table, test_fraction=0.2, val_fraction=0.2, seed=0)  # 8 images: 3 per class left


def test_a_failed_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    head_ct = synthetic.make_head_ct(tmp_path / "head_ct", n_per_class=10)
    victim = _image_dir(head_ct) / "003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    monkeypatch.setenv("MSTL_DATA_DIR", str(head_ct.parent))
    profile = config.get_profile("smoke", data="real")
    spec = RunSpec(name="stage2_scratch", stage="stage2", profile=profile, init="scratch")
    with pytest.raises(DataFormatError, match="003.png"):
        lifecycle.run(spec)
    run_dir = lifecycle.run_dir(spec)
    assert not (run_dir / "metrics.json").exists()
    with pytest.raises(FileNotFoundError, match="not a complete run"):
        lifecycle.load(run_dir)


# ----------------------------------------------------------------- manifests


def test_manifest_check_says_exactly_what_differs(head_ct, tmp_path):
    from mstl_utils.data import manifest
    from mstl_utils.core import repro

    def rows():
        source = data.locate("head_ct", data="real", data_dir=head_ct.parent, download=False)
        table, _ = data.read_table(source)
        return manifest.describe("head_ct", table, source.root, repro.file_hashes(table["path"], source.root))

    expected = rows()
    assert manifest.compare("head_ct", rows(), expected, manifest="m.csv").summary() == "matches m.csv"
    images_dir = _image_dir(head_ct)
    (images_dir / "001.png").write_bytes((images_dir / "002.png").read_bytes())  # changed contents
    labels = _labels(head_ct).read_text().replace("\n007,0", "\n007,1")  # relabelled
    (images_dir / "006.png").unlink()  # removed, with its row
    _labels(head_ct).write_text("\n".join(line for line in labels.splitlines() if not line.startswith("006")) + "\n")
    check = manifest.compare("head_ct", rows(), expected, manifest="m.csv")
    assert not check.matches
    text = check.summary()
    assert "1 expected file(s) missing (006.png)" in text
    assert "1 file(s) with another label (007.png)" in text
    assert "1 file(s) with other contents than the originals (001.png)" in text
    assert "all/0: 4 expected, 2 found" in text and "all/1: 4 expected, 5 found" in text


def test_prepare_records_the_manifest_check_for_real_data(head_ct, tmp_path, monkeypatch):
    from mstl_utils.data import manifest

    monkeypatch.setattr(manifest, "manifest_path", lambda dataset, root=None: tmp_path / f"{dataset}.csv")
    stage_data = data.prepare("head_ct", data="real", data_dir=head_ct.parent, image_size=32, val_fraction=0.5)
    assert stage_data.describe()["manifest"] is None  # no manifest for these files: not checked
    (tmp_path / "head_ct.csv").write_text("split,label,file,sha256\nall,1,000.png,abc\n")
    stage_data = data.prepare("head_ct", data="real", data_dir=head_ct.parent, image_size=32, val_fraction=0.5)
    assert stage_data.describe()["manifest"].startswith("differs from <external>/head_ct.csv: 7 unexpected file(s)")
