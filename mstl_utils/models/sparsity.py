"""Pruning masks of a network: which weights take part, global magnitude or random pruning to an exact
sparsity, rewinding the survivors, and plain state dicts of masked weights.

``torch.nn.utils.prune`` re-parametrises a pruned weight as ``weight_orig * weight_mask`` (a
forward pre-hook recomputes ``weight``), and each further call prunes a share of what remains.
Here every call is given the exact number of weights to remove, so that the sparsity after
each round is the target to the weight. A checkpoint of a pruned model stores the effective
(masked) weights as a plain state dict, which any model of the registry loads, plus the masks as
booleans, which ``apply_masks`` re-applies.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from . import registry as models

#: Which weights take part. "backbone": every convolution and linear weight except the first
#: convolution, the depthwise convolutions and the classifier (few weights, each carrying much:
#: a pruned depthwise 3x3 kernel loses a ninth of its channel's filter); "all": every one.
SCOPES = ("backbone", "all")



def eligible_parameters(model: nn.Module, scope: str = "backbone") -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every convolution and linear layer taking part under ``scope``,
    in module order. The classifier is the last linear layer."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}; expected one of {SCOPES}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if scope == "all":
        return [(m, "weight") for m in layers]
    first = next((m for m in layers if isinstance(m, nn.Conv2d)), None)
    classifier = [m for m in layers if isinstance(m, nn.Linear)][-1:]
    return [(m, "weight") for m in layers
            if m is not first and not any(m is c for c in classifier)
            and not (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels)]


def effective_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The weight the forward pass uses: ``orig * mask`` when pruned. Computed afresh (the
    ``weight`` attribute the pruning hook sets is only refreshed by a forward pass)."""
    if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def sparsity(params: list[tuple[nn.Module, str]]) -> float:
    """Share of the given weights that are zero (pruned, or zero by chance)."""
    total = sum(effective_weight(m, n).numel() for m, n in params)
    zeros = sum(int((effective_weight(m, n) == 0).sum()) for m, n in params)
    return zeros / total


def _pruned_count(params: list[tuple[nn.Module, str]]) -> int:
    return sum(int((getattr(m, f"{n}_mask") == 0).sum()) if hasattr(m, f"{n}_mask") else 0 for m, n in params)


def prune_global(model: nn.Module, params: list[tuple[nn.Module, str]], target: float, *,
                 method: str = "l1", seed: int = 0) -> int:
    """Prune ``params`` together until exactly ``round(target * n)`` of their ``n`` weights are pruned
    (``method``: "l1" smallest magnitudes of the current weights, or "random"); return the number pruned now.

    ``torch.nn.utils.prune`` prunes a given count among the weights still unpruned, so the count is
    the target minus what earlier rounds removed, never the target's share again.
    """
    if not 0 <= target < 1:
        raise ValueError(f"target sparsity {target}; expected 0 <= target < 1")
    if method not in ("l1", "random"):
        raise ValueError(f"method={method!r}; expected 'l1' or 'random'")
    # parameters_to_vector needs contiguous tensors; training leaves them channels_last.
    model.to(memory_format=torch.contiguous_format)
    total = sum(getattr(m, n if not hasattr(m, f"{n}_orig") else f"{n}_orig").numel() for m, n in params)
    count = round(target * total) - _pruned_count(params)
    if count < 0:
        raise ValueError(f"target sparsity {target:.4f} is below the {_pruned_count(params) / total:.4f} already pruned")
    scores = {(m, n): effective_weight(m, n).detach().abs().contiguous() for m, n in params}
    torch.manual_seed(seed)  # the random control's draw (L1 draws nothing)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured if method == "l1" else prune.RandomUnstructured,
                              importance_scores=scores, amount=count)
    return count


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.<param>": bool mask}`` of every pruned parameter."""
    return {key.removesuffix("_mask"): value.bool() for key, value in model.state_dict().items()
            if key.endswith("_mask")}


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a plain (unpruned) model of the same architecture loads: masked weights under their own names."""
    state = model.state_dict()
    plain = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            name = key.removesuffix("_orig")
            plain[name] = (value * state[f"{name}_mask"]).contiguous()
        else:
            plain[key] = value
    return plain


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Re-apply saved masks (``masks_of``) to a model that holds the matching weights."""
    for name, mask in masks.items():
        module_name, _, param = name.rpartition(".")
        module = model.get_submodule(module_name)
        weight = getattr(module, param)
        if weight.shape != mask.shape:
            raise ValueError(f"mask {name} has shape {tuple(mask.shape)}; the model's weight has {tuple(weight.shape)}")
        prune.custom_from_mask(module, param, mask.to(weight.dtype))
    return model


def rewind(model: nn.Module, start_state: dict[str, torch.Tensor]) -> None:
    """Set every weight and buffer to ``start_state`` (a plain state dict of the unpruned start), the
    pruned ones through ``<name>_orig``: survivors get their starting values, pruned weights stay zero."""
    state = model.state_dict()
    missing = [k for k in start_state if k not in state and f"{k}_orig" not in state]
    if missing:
        raise ValueError(f"start state does not fit the model: no {missing[:3]}")
    with torch.no_grad():
        for key, value in start_state.items():
            state[f"{key}_orig" if f"{key}_orig" in state else key].copy_(value)


def _pruned_names(module: nn.Module) -> list[str]:
    return [hook._tensor_name for hook in module._forward_pre_hooks.values()
            if isinstance(hook, prune.BasePruningMethod)]


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies a pruned model: the ``weight`` a pruning hook computed in the
    last forward pass is part of the autograd graph, which deepcopy refuses; it is replaced by a
    detached copy (the next forward pass recomputes it anyway)."""
    for module in model.modules():
        for name in _pruned_names(module):
            setattr(module, name, effective_weight(module, name).detach())
    return copy.deepcopy(model)


def remove_masks(model: nn.Module) -> nn.Module:
    """Fold the masks into plain weights, in place (zeros stay in dense tensors; no hooks); return the model."""
    for module in model.modules():
        for name in _pruned_names(module):
            prune.remove(module, name)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its masks folded into plain weights (``remove_masks``)."""
    return remove_masks(copy_model(model))



def nonzero_parameters(model: nn.Module) -> int:
    """Nonzero entries over every parameter of the model (biases, normalisation and unpruned layers included)."""
    names = {name.removesuffix("_orig") for name, _ in model.named_parameters()}
    return sum(int(torch.count_nonzero(v)) for k, v in effective_state(model).items() if k in names)


def pruned_checkpoint(model: nn.Module, payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint (``payload`` + ``state_dict`` + ``masks``) that ``models.load_from_checkpoint`` reads as a
    plain model and ``load_pruned`` as a pruned one."""
    return {**payload, "state_dict": effective_state(model), "masks": masks_of(model)}


def load_pruned(checkpoint: dict[str, Any], *, stage: str = "pruned") -> tuple[nn.Module, Any]:
    """(pruned model, weights info) from a ``pruned_checkpoint``: weights loaded, masks re-applied."""
    if "masks" not in checkpoint:
        raise ValueError("not a pruned checkpoint (no 'masks'); write it with pruned_checkpoint")
    model, weights = models.load_from_checkpoint(checkpoint, num_classes=checkpoint["num_classes"], stage=stage)
    return apply_masks(model, checkpoint["masks"]), weights

