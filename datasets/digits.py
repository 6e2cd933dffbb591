"""``digits``: scikit-learn's bundled handwritten digits with a planted group attribute.

It needs no files, so every machine can run a real suite offline. The 1,797 8x8 images
(16 grey levels) are the UCI optical-recognition test set that scikit-learn ships.

Planted group: a fixed draw (seed ``GROUP_SEED``, independent of the split seed) puts 35 %
of the images into group 1; those images are degraded with Gaussian pixel noise
(``noise`` grey levels, default 4) and a random shift of one pixel. Group 1 is therefore
harder, a dense model does worse on it, and the fairness metrics have something to measure.
Target: the digit (10 classes), or ``target="parity"`` (odd = 1), a binary task.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.datasets.base import Split, TaskData, register_task, stratified_split

GROUP_SEED = 20240611
GROUP_RATE = 0.35
TARGETS = ("digit", "parity")


def _planted_groups(images: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(GROUP_SEED)
    s = (rng.random(len(images)) < GROUP_RATE).astype(np.int64)
    degraded = images.copy()
    hit = np.flatnonzero(s == 1)
    shifts = rng.integers(-1, 2, size=(len(hit), 2))
    for row, (dy, dx) in zip(hit, shifts):
        degraded[row] = np.roll(degraded[row], (dy, dx), axis=(0, 1))
    degraded[hit] += rng.normal(0.0, noise, size=degraded[hit].shape)
    return np.clip(degraded, 0, 16), s


@register_task("digits", "scikit-learn's 8x8 handwritten digits with a planted, degraded group (no files needed)")
def build(
    root: Path,
    target: str = "digit",
    noise: float = 4.0,
    size: int = 8,
    channels: int = 1,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> TaskData:
    from sklearn.datasets import load_digits

    if target not in TARGETS:
        raise ConfigError(f"digits: unknown target {target!r} (choose from {', '.join(TARGETS)})")
    if not 1 <= size <= 1024 or not 1 <= channels <= 64:
        raise ConfigError(f"digits: size must lie in 1..1024 and channels in 1..64, got size {size},"
                          f" channels {channels}")
    if not noise >= 0:
        raise ConfigError(f"digits: noise must be >= 0, got {noise}")
    raw = load_digits()
    images, s = _planted_groups(raw.images.astype(np.float32), noise)
    y = raw.target.astype(np.int64) if target == "digit" else (raw.target % 2).astype(np.int64)
    x = torch.from_numpy(images / 16.0).float().unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1).numpy()

    index = np.arange(len(y))
    parts = stratified_split(y, s, fractions, split_seed)
    train, val, test = (Split(x[p], y[p], s[p], index[p]) for p in parts)
    classes = [str(d) for d in range(10)] if target == "digit" else ["even", "odd"]
    return TaskData(
        name="digits",
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        input_shape=tuple(x.shape[1:]),
        target=target,
        sensitive="planted",
        group_names={0: "clean", 1: "degraded"},
        class_names=classes,
        meta={"group_seed": GROUP_SEED, "group_rate": GROUP_RATE, "noise": noise},
    )
