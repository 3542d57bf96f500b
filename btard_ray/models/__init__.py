"""The networks peers train, built identically on every peer, and their loss.

``build_model(cfg, dataset, seed)`` seeds torch's generator with the job seed and builds the
model named by ``cfg.name`` for the data set's input shape and classes, so every peer
starts from bit-identical weights. ``compute_loss(model, batch)`` is the one loss used by
peers, validators and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from btard_ray.config import ModelConfig
from btard_ray.data.dataset import Dataset, Task
from btard_ray.models.mnist_cnn import MnistCNN
from btard_ray.models.resnet import ResNet18

__all__ = ["MODELS", "ModelSpec", "MnistCNN", "ResNet18", "build_model", "compute_loss"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: the task it solves and how to build it for a data set."""

    task: Task
    build: Callable[[ModelConfig, Dataset], nn.Module]
    description: str


def _image_shape(cfg: ModelConfig, dataset: Dataset) -> tuple[int, int, int]:
    if len(dataset.input_shape) != 3:
        raise ValueError(
            f"model {cfg.name!r} needs (C, H, W) images, data set {dataset.name!r} has {dataset.input_shape}"
        )
    c, h, w = dataset.input_shape
    return c, h, w


def _mnist_cnn(cfg: ModelConfig, dataset: Dataset) -> nn.Module:
    c, h, w = _image_shape(cfg, dataset)
    return MnistCNN(in_channels=c, input_hw=(h, w), num_classes=dataset.num_classes)


def _resnet18(cfg: ModelConfig, dataset: Dataset) -> nn.Module:
    c, _, _ = _image_shape(cfg, dataset)
    return ResNet18(num_classes=dataset.num_classes, in_channels=c)


def _albert_mlm(cfg: ModelConfig, dataset: Dataset) -> nn.Module:
    # Imported here: transformers adds seconds to the start-up of peers that never use it.
    from btard_ray.models.albert import build_albert_mlm

    if len(dataset.input_shape) != 1:
        raise ValueError(
            f"model 'albert_mlm' needs (seq_len,) inputs, data set {dataset.name!r} has {dataset.input_shape}"
        )
    (seq_len,) = dataset.input_shape
    return build_albert_mlm(
        vocab_size=dataset.num_classes,
        seq_len=seq_len,
        embedding_size=cfg.embedding_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
    )


MODELS: dict[str, ModelSpec] = {
    "mnist_cnn": ModelSpec("classification", _mnist_cnn, "the BTARD-SGD study's small MNIST CNN"),
    "resnet18": ModelSpec("classification", _resnet18, "CIFAR ResNet-18 with batch-statistics BatchNorm"),
    "albert_mlm": ModelSpec("mlm", _albert_mlm, "a small ALBERT masked language model"),
}


def build_model(cfg: ModelConfig, dataset: Dataset, seed: int) -> nn.Module:
    """The model ``cfg.name`` for ``dataset``, initialised from ``seed`` (in training mode).

    Two calls with the same arguments give bit-identical parameters and buffers. torch's
    global generator is seeded for the construction only and restored afterwards, so the
    caller's random state is untouched. ValueError for an unknown model or one that does
    not fit the data set's task or input shape.
    """
    spec = MODELS.get(cfg.name)
    if spec is None:
        raise ValueError(f"unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))}")
    if dataset.task != spec.task:
        raise ValueError(
            f"model {cfg.name!r} solves {spec.task!r} but data set {dataset.name!r} is {dataset.task!r}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(cfg, dataset)
    return model.train()


def compute_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """(mean loss, number correct, number counted) of ``model`` on ``batch``.

    Classification batches (``x``, ``y``): cross-entropy of the logits, correct = argmax
    hits, counted = batch size. Masked-LM batches (``input_ids``, ``attention_mask``,
    ``labels``): the HuggingFace model's loss (mean over masked tokens), correct and
    counted over the masked tokens only (``labels != -100``). The loss carries the graph;
    call ``.backward()`` on it for the gradient.
    """
    if "input_ids" in batch:
        labels = batch["labels"]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        counted = labels != -100
        with torch.no_grad():
            correct = (out.logits.argmax(dim=-1)[counted] == labels[counted]).sum()
        return out.loss, int(correct), int(counted.sum())
    if "x" in batch and "y" in batch:
        logits = model(batch["x"])
        loss = F.cross_entropy(logits, batch["y"])
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == batch["y"]).sum()
        return loss, int(correct), int(batch["y"].numel())
    raise ValueError(f"unrecognised batch with keys {sorted(batch)}; expected x/y or input_ids/attention_mask/labels")
