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


def tree_hash(value: object) -> str:
    """SHA-256 over a nested state (dicts, lists, tensors, numbers, strings) in a fixed order.

    Used for a replica's whole state (weights, optimizer, schedule): a newcomer must hold
    exactly what the active peers hold, not only the same weights.
    """
    digest = hashlib.sha256()

    def feed(v: object) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().to("cpu").contiguous()
            digest.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            digest.update(f"D{len(v)}|".encode())
            for key in sorted(v, key=repr):
                digest.update(f"{key!r}=".encode())
                feed(v[key])
        elif isinstance(v, (list, tuple)):
            digest.update(f"L{len(v)}|".encode())
            for item in v:
                feed(item)
        else:
            digest.update(f"V{v!r}|".encode())

    feed(value)
    return digest.hexdigest()
