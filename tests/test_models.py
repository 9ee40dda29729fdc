import numpy as np
import pytest
import torch

from mstl_utils import models
from mstl_utils.core import repro


def _fake_weights_dir(tmp_path):
    """A weights folder with a backbone state_dict in the layout of the shared file (no classifier)."""
    backbone = models.MODELS["mobilenet_v2"].build()
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("classifier.1")}
    torch.save(state, tmp_path / "mobilenet_v2_imagenet_backbone.pth")
    return tmp_path, state


def test_build_resets_head_and_takes_one_grey_channel():
    model, info = models.build_model("mobilenet_v2", num_classes=3, init="scratch")
    assert info.source == "random" and info.init == "scratch"
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_local_weights_are_loaded_and_recorded(tmp_path):
    folder, state = _fake_weights_dir(tmp_path)
    model, info = models.build_model("mobilenet_v2", num_classes=2, weights_dir=folder)
    assert info.source == "local-file" and info.file == "mobilenet_v2_imagenet_backbone.pth"
    assert info.sha256 == repro.sha256_file(folder / info.file)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_missing_weights_stop_unless_random_is_allowed(tmp_path):
    with pytest.raises(models.WeightsNotFoundError, match="MSTL_WEIGHTS_DIR"):
        models.build_model("mobilenet_v2", num_classes=2, weights_dir=tmp_path)
    _, info = models.build_model("mobilenet_v2", num_classes=2, weights_dir=tmp_path, allow_random=True)
    assert info.source == "random (ImageNet unavailable)"


def test_checkpoint_continues_and_replaces_head_when_classes_differ():
    model, info = models.build_model("mobilenet_v2", num_classes=3, init="scratch")
    checkpoint = {"model": "mobilenet_v2", "num_classes": 3, "state_dict": model.state_dict(), "weights": {"source": "random"}}
    same, _ = models.load_from_checkpoint(checkpoint, num_classes=3, stage="stage1")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))
    other, info = models.load_from_checkpoint(checkpoint, num_classes=2, stage="stage1")
    assert other.backbone.classifier[1].out_features == 2
    assert torch.equal(other.backbone.features[0][0].weight, model.backbone.features[0][0].weight)
    assert info.init == "checkpoint" and info.source == "stage1"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.build_model("nope", num_classes=2)


@pytest.mark.real_data
def test_shared_imagenet_weights_give_sensible_predictions(real_weights_dir):
    """The dequantised torchvision MobileNetV2 (with its ImageNet head) recognises a photograph."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    backbone = models.MODELS["mobilenet_v2"].build()
    backbone.load_state_dict(torch.load(real_weights_dir / "mobilenet_v2_imagenet_tvq_dequant.pth", weights_only=True))
    image = torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1).float().div(255)
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    top5 = backbone.eval()((image - mean) / std).topk(5).indices[0].tolist()
    assert 967 in top5 or 504 in top5  # espresso or coffee mug
