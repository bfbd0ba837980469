"""Seeding that stays local to a call: torch's global RNG is untouched afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch inside a fork of its RNG (CPU and any GPUs)."""
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        yield
