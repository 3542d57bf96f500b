"""Hashing model state, so peers can show that their replicas are identical."""

from __future__ import annotations

import hashlib

import torch


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()`` (name, dtype, shape, raw bytes).

    Two replicas hash equal iff all their parameters and buffers are bit-identical.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
