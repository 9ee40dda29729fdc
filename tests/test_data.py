import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mstl_utils import data
from mstl_utils.data import synthetic


def test_head_ct_layout_and_header_with_space(synthetic_root):
    assert (synthetic_root / "head_ct" / "labels.csv").read_text().startswith("id, hemorrhage\n")
    source = data.locate("head_ct", data="real", data_dir=synthetic_root)
    assert source.kind == "real" and source.origin == "parameter data_dir"
    table, classes = data.read_table(source)
    assert classes == ("normal", "hemorrhage")
    assert len(table) == 30 and table["label"].sum() == 15
    assert table["path"].str.endswith("head_ct/head_ct/000.png").any()


def test_chest_xray_kaggle_nesting_and_patients(synthetic_root):
    source = data.locate("chest_xray", data="real", data_dir=synthetic_root)
    assert source.root.name == "chest_xray" and source.root.parent.name == "chest_xray"
    table, _ = data.read_table(source)
    assert set(table["split"]) == {"train", "val", "test"}
    pneumonia = table[table["label"] == 1]
    assert pneumonia["group"].str.fullmatch(r"person\d+").all()


@pytest.mark.parametrize(
    "name, patient",
    [("person1000_bacteria_2931.jpeg", "person1000"), ("person3_virus_16.jpeg", "person3"),
     ("IM-0115-0001.jpeg", "IM-0115"), ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427")],
)
def test_patient_id(name, patient):
    assert data.patient_id(name) == patient


def test_validation_is_grouped_by_patient_and_test_untouched(synthetic_root):
    stage = data.prepare("chest_xray", data="real", data_dir=synthetic_root, image_size=16, val_fraction=0.25)
    assert data.group_overlap(stage, "train", "val") == 0
    assert (stage.table.loc[stage.table["split"] == "test", "part"] == "test").all()
    assert (stage.table.loc[stage.table["split"] == "val", "part"] == "unused").all()
    assert set(stage.table.loc[stage.table["part"] == "val", "label"]) == {0, 1}


def test_head_ct_split_is_stratified_and_disjoint(synthetic_root):
    stage = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=16, test_fraction=0.2, seed=3)
    parts = stage.table.groupby(["part", "label"]).size()
    assert parts["test", 0] == parts["test", 1] == 3
    assert stage.table["path"].is_unique
    assert stage.images.shape == (30, 1, 16, 16) and stage.images.dtype == torch.uint8


def test_every_image_becomes_one_grey_channel(tmp_path):
    rgba = tmp_path / "tinted.png"
    Image.new("RGBA", (48, 36), (200, 40, 40, 255)).save(rgba)
    array = data.load_image(rgba, 8)
    assert array.shape == (8, 8) and array.dtype == np.uint8
    assert array[0, 0] == round(0.299 * 200 + 0.587 * 40 + 0.114 * 40)


def test_image_folder_dataset(tmp_path):
    for label in ("cats", "dogs"):
        for i in range(3):
            (tmp_path / "ds" / label).mkdir(parents=True, exist_ok=True)
            Image.new("L", (10, 10), 40 * i).save(tmp_path / "ds" / label / f"{i}.png")
    source = data.locate(str(tmp_path / "ds"))
    table, classes = data.read_table(source)
    assert classes == ("cats", "dogs") and len(table) == 6


def test_search_order_parameter_then_env_then_local(synthetic_root, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(synthetic_root / "head_ct", other / "head_ct")
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    assert data.locate("head_ct", data="real").origin == "$MSTL_DATA_DIR"
    assert data.locate("head_ct", data="real", data_dir=other).root == other / "head_ct"


def test_real_missing_names_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataNotFoundError) as error:
        data.locate("head_ct", data="real")
    message = str(error.value)
    assert "MSTL_DATA_DIR" in message and str(tmp_path / "empty") in message and "kagglehub" in message


def test_auto_falls_back_to_synthetic_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MSTL_DATA_DIR", str(tmp_path / "empty"))
    source = data.locate("chest_xray", data="auto")
    assert source.is_synthetic and source.origin == "generated"
    assert "SYNTHETIC" in capsys.readouterr().err
    assert data.read_table(source)[0]["split"].nunique() == 3


def test_bad_labels_header_is_a_clear_error(tmp_path):
    root = synthetic.make_head_ct(tmp_path / "head_ct", n_per_class=2)
    (root / "labels.csv").write_text("ID,label\n000,1\n")
    with pytest.raises(data.DataFormatError, match=r"labels.csv: header is \['ID', 'label'\]; expected 'id, hemorrhage'"):
        data.read_head_ct(root)


def test_missing_image_and_corrupt_image_name_the_file(tmp_path):
    root = synthetic.make_head_ct(tmp_path / "head_ct", n_per_class=2)
    (root / "head_ct" / "head_ct" / "001.png").unlink()
    with pytest.raises(data.DataFormatError, match="lists id.* 001, but .* has no image"):
        data.read_head_ct(root)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(data.DataFormatError, match="broken.png: not an image PIL can identify"):
        data.load_image(broken, 8)


def test_loader_yields_unit_range_floats(synthetic_root):
    stage = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=16)
    images, labels = next(iter(stage.loader("train", batch_size=4, augment=True, generator=torch.Generator().manual_seed(0))))
    assert images.dtype == torch.float32 and images.shape == (4, 1, 16, 16)
    assert 0.0 <= images.min() and images.max() <= 1.0 and labels.dtype == torch.long


def test_brain_tumor_mri_is_read_from_its_kaggle_layout(tmp_path, monkeypatch):
    from mstl_utils.data import synthetic

    monkeypatch.delenv("MSTL_DATA_DIR", raising=False)  # only the folder given here

    synthetic.make_brain_tumor_mri(tmp_path / "downloads" / "brain_tumor_mri", n_per_class={"Training": 6, "Testing": 2})
    source = data.locate("brain_tumor_mri", data="real", data_dir=tmp_path / "downloads")
    table, classes = data.read_table(source)
    assert classes == ("glioma", "meningioma", "notumor", "pituitary")
    assert table.groupby("split").size().to_dict() == {"test": 8, "train": 24}
    assert table.groupby(["split", "label"]).size().unstack().to_dict("index") == {
        "test": {0: 2, 1: 2, 2: 2, 3: 2}, "train": {0: 6, 1: 6, 2: 6, 3: 6}}
    stage = data.prepare("brain_tumor_mri", data="real", data_dir=tmp_path / "downloads", image_size=32, val_fraction=0.25)
    assert stage.num_classes == 4 and stage.images.shape[1] == 1  # RGB and grey files alike become one grey channel
    assert (stage.table["part"] == "test").sum() == 8  # the official Testing split is the test part
    with pytest.raises(data.DataNotFoundError, match="lacks Testing/glioma"):
        (tmp_path / "downloads" / "brain_tumor_mri" / "Testing" / "glioma").rename(tmp_path / "moved")
        data.locate("brain_tumor_mri", data="real", data_dir=tmp_path / "downloads")
