"""Shared machinery of the image tasks: a decoded-image cache, lazy row views and batch transforms.

Decoding follows the FairLRF preprocessing: the shorter side is resized to ``resize`` and the
centre ``size`` x ``size`` square is cropped (paper: resize 128, crop 112). Images are stored as
uint8 (N, 3, S, S) in one ``.npy`` per (task, resolution, file list) under
``cache_root()/images/`` and memory-mapped read-only afterwards, so a second run decodes no
JPEG and several processes share one copy through the page cache.

Cache layout, for a key ``K`` = hash of (task, size, resize, policy, sorted relative file
names with their byte sizes and mtimes)::

    <cache_root>/images/<task>-<size>px-<K>.json   what was decoded, which files failed
    <cache_root>/images/<task>-<size>px-<K>.npy    uint8 (n_files, 3, size, size), rows in sorted-name order

Both are written to a temporary name and renamed into place, the ``.npy`` last: a crash never
leaves a cache that looks complete. Rows of unreadable files stay zero and are listed in the
``.json``; callers drop them.

Normalisation: none. Pixels are scaled to [0, 1] and not standardised (mean 0, std 1), as in
the FairLRF/FairQuantize code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.core.hashing import array_hash, config_hash
from fairsqueeze.datasets.base import Split, TaskData, cache_root
from fairsqueeze.core.vision import torchvision  # noqa: F401  (must precede the v2 import)
from torchvision.transforms.v2 import functional as F

log = logging.getLogger(__name__)

QUIET_ENV = "FAIRSQUEEZE_QUIET"
# Bump when decoding changes, so old caches are not reused.
POLICY = "short-side-bilinear+center-crop/v1"
PAPER_RESIZE, PAPER_SIZE = 128, 112

_decoded_total = 0


def decoded_total() -> int:
    """Image files this process has decoded (or tried to) so far; cache hits add nothing."""
    return _decoded_total


def default_resize(size: int) -> int:
    """The paper's resize/crop ratio (128/112) applied to ``size``."""
    return int(round(size * PAPER_RESIZE / PAPER_SIZE))


def check_geometry(size: int, resize: int | None) -> tuple[int, int]:
    """Validate the ``size``/``resize`` options; returns (size, resize)."""
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"option size must be a positive integer, got {size!r}")
    resize = default_resize(size) if resize is None else resize
    if not isinstance(resize, int) or resize < size:
        raise ConfigError(f"option resize must be an integer >= size ({size}), got {resize!r}")
    return size, resize


# --------------------------------------------------------------------------- decoding


def decode_image(path: str | os.PathLike, size: int, resize: int) -> np.ndarray:
    """Decode one image to uint8 (3, size, size): shorter side to ``resize``, centre crop."""
    with Image.open(path) as im:
        # JPEG can decode at 1/2, 1/4, 1/8 scale for free; draft never goes below the request.
        im.draft("RGB", (resize, resize))
        im = im.convert("RGB")
    w, h = im.size
    scale = resize / min(w, h)
    nw, nh = max(resize, round(w * scale)), max(resize, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _try_decode(path: Path, size: int, resize: int) -> np.ndarray | None:
    try:
        return decode_image(path, size, resize)
    except Exception:  # any decoder failure means "unreadable", never a crashed run
        return None


def _progress_disabled() -> bool:
    return bool(os.environ.get(QUIET_ENV)) or not sys.stderr.isatty()


# --------------------------------------------------------------------------- cache


@dataclass
class DecodedImages:
    """The cached array for a list of files, and where each requested file landed in it."""

    path: Path  # the .npy file
    rows: np.ndarray  # rows[i] = row of files[i] in the array, -1 if unreadable
    decoded: int  # images decoded by this call (0 on a cache hit)
    failed: list[str] = field(default_factory=list)  # unreadable files (relative names)
    sha256: str = ""  # content hash of the .npy file, checked before every reuse

    @property
    def kept(self) -> np.ndarray:
        """Positions of the requested files that decoded (the caller keeps these rows)."""
        return np.flatnonzero(self.rows >= 0)

    def view(self, positions: np.ndarray) -> "ImageRows":
        """Lazy rows for the given positions of the requested file list (all must be kept)."""
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        if (rows < 0).any():
            raise ValueError("view() asked for an image that failed to decode")
        return ImageRows(self.path, rows, self.sha256)


def _fingerprint(image_dir: Path, names: Sequence[str]) -> list[tuple[str, int, int]]:
    stats = []
    for name in names:
        st = (image_dir / name).stat()
        stats.append((name, st.st_size, st.st_mtime_ns))
    return stats


def _cache_paths(task: str, size: int, key: str) -> tuple[Path, Path]:
    stem = cache_root() / "images" / f"{task}-{size}px-{key}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _decode_into(out: np.ndarray, image_dir: Path, names: Sequence[str], size: int, resize: int,
                 workers: int, desc: str) -> list[str]:
    """Decode ``names`` into ``out`` row by row; returns the names that failed."""
    global _decoded_total
    failed: list[str] = []
    chunk = 256  # bounds the number of decoded images waiting in memory
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(names), desc=desc, unit="img", disable=_progress_disabled()) as bar:
        for start in range(0, len(names), chunk):
            batch = names[start:start + chunk]
            # Pillow releases the GIL while decoding, so threads decode in parallel.
            results = pool.map(lambda n: _try_decode(image_dir / n, size, resize), batch)
            for offset, (name, img) in enumerate(zip(batch, results)):
                if img is None:
                    failed.append(name)
                else:
                    out[start + offset] = img
                _decoded_total += 1
            bar.update(len(batch))
    return failed


def _report_failed(task: str, failed: list[str], cached: bool) -> None:
    if failed:
        first = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        where = " (recorded in the cache)" if cached else ""
        log.warning("%s: skipped %d unreadable image(s)%s: %s", task, len(failed), where, first)


def decode_images(task: str, image_dir: str | os.PathLike, files: Sequence[str], size: int,
                  resize: int | None = None, workers: int | None = None) -> DecodedImages:
    """Decode ``files`` (names relative to ``image_dir``) once and cache them; see the module doc.

    Files that cannot be read are reported with a warning and marked ``-1`` in ``rows``.
    """
    size, resize = check_geometry(size, resize)
    image_dir = Path(image_dir)
    names = sorted(set(files))
    key = config_hash({"task": task, "size": size, "resize": resize, "policy": POLICY,
                       "files": _fingerprint(image_dir, names)})
    npy, meta_path = _cache_paths(task, size, key)
    cached = _verified_cache(task, npy, meta_path)
    decoded = 0
    if cached is None:
        failed, sha = _build(task, npy, meta_path, image_dir, names, size, resize, workers)
        decoded = len(names)
    else:
        failed, sha = cached
        log.info("%s: %d images at %dpx from cache %s (0 decoded)", task, len(names), size, npy)
    _report_failed(task, failed, cached=decoded == 0)
    position = {name: i for i, name in enumerate(names)}
    bad = set(failed)
    rows = np.array([-1 if f in bad else position[f] for f in files], dtype=np.int64)
    return DecodedImages(npy, rows, decoded, failed, sha)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _verified_cache(task: str, npy: Path, meta_path: Path) -> tuple[list[str], str] | None:
    """(failed files, content hash) of a complete cache whose bytes match the hash recorded
    when it was written; None when it must be (re)built: missing, truncated or altered."""
    if not (npy.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        failed, sha = list(meta["failed"]), str(meta["sha256"])
    except (ValueError, KeyError):
        return None
    if file_sha256(npy) != sha:
        log.warning("%s: image cache %s does not match its recorded hash; rebuilding it", task, npy.name)
        return None
    return failed, sha


def _build(task: str, npy: Path, meta_path: Path, image_dir: Path, names: list[str], size: int,
           resize: int, workers: int | None) -> list[str]:
    npy.parent.mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    tmp = npy.with_name(f"{npy.name}.tmp-{os.getpid()}")
    started = time.perf_counter()
    try:
        # Decode straight into a file-backed array: memory stays at one chunk of images.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(names), 3, size, size))
        failed = _decode_into(out, image_dir, names, size, resize, workers, f"{task} {size}px")
        out.flush()
        del out
        sha = file_sha256(tmp)
        meta = {"task": task, "size": size, "resize": resize, "policy": POLICY,
                "count": len(names), "failed": failed, "sha256": sha}
        _write_atomic_text(meta_path, json.dumps(meta, indent=1))
        os.replace(tmp, npy)  # last step: the .npy appearing means the cache is complete
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: decoded %d images at %dpx into %s in %.1f s", task, len(names), size, npy,
             time.perf_counter() - started)
    return failed, sha


# --------------------------------------------------------------------------- lazy rows


class ImageRows:
    """Selected rows of a cached image array, read on demand from the memory map.

    Indexing with an int, slice or index array returns a plain ``np.ndarray`` holding only
    those rows, like numpy fancy indexing. Pickling sends the file path and row numbers, not
    pixels, so data-loader worker processes reopen the same map.
    """

    def __init__(self, path: str | os.PathLike, rows: np.ndarray, file_sha256: str = ""):
        self.path = Path(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.file_sha256 = file_sha256
        self._array: np.ndarray | None = None

    @property
    def digest(self) -> str:
        """Content hash of these rows: the cache file's hash and the rows taken from it."""
        if not self.file_sha256:
            return array_hash(np.asarray(self))
        return config_hash({"file": self.file_sha256, "rows": array_hash(self.rows)})

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows),) + tuple(self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        key, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(key, torch.Tensor):
            key = key.numpy()
        selected = self.rows[key]
        if np.ndim(selected) == 0:
            out = np.array(self.array[int(selected)])
            return out[rest] if rest else out
        # Sorted reads walk the file forwards; then restore the requested order.
        order = np.argsort(selected, kind="stable")
        out = np.empty((len(selected),) + self.array.shape[1:], dtype=self.array.dtype)
        out[order] = self.array[selected[order]]
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "file_sha256": self.file_sha256}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.rows, self._array = state["path"], state["rows"], None
        self.file_sha256 = state.get("file_sha256", "")

    def __repr__(self) -> str:
        return f"ImageRows({self.path.name}, n={len(self.rows)})"


# --------------------------------------------------------------------------- transforms


class ImageBatchTransform:
    """uint8 (B, 3, S, S) -> float in [0, 1]. At train time every image gets its own random
    horizontal flip and light colour jitter (brightness, contrast, saturation, in that order).
    No mean/std normalisation, as in the paper.

    ``v2.ColorJitter`` draws one factor per call, i.e. one for the whole batch; looping over
    images is slow on small CPUs. So the factors are drawn per image and applied to the whole
    batch at once with torchvision's blend formulas (``v2.functional.adjust_*``).
    """

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1,
                 flip: bool = True):
        self.brightness, self.contrast, self.saturation, self.flip = brightness, contrast, saturation, flip

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float().div_(255)
        if not train:
            return x
        n = x.shape[0]
        if self.flip:
            flipped = torch.rand(n) < 0.5
            x = torch.where(flipped.view(n, 1, 1, 1), F.horizontal_flip(x), x)
        return jitter(x, *(_factors(n, w) for w in (self.brightness, self.contrast, self.saturation)))

    def __repr__(self) -> str:
        return (f"ImageBatchTransform(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, flip={self.flip})")


def _factors(n: int, width: float) -> torch.Tensor | None:
    """Per-image factors uniform in [1 - width, 1 + width], or None for no change."""
    if not width:
        return None
    return torch.empty(n).uniform_(max(0.0, 1 - width), 1 + width)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def jitter(x: torch.Tensor, brightness: torch.Tensor | None, contrast: torch.Tensor | None,
           saturation: torch.Tensor | None) -> torch.Tensor:
    """Batched ``adjust_brightness``/``adjust_contrast``/``adjust_saturation`` with one factor
    per image (float images in [0, 1]; a None factor skips that step)."""
    if brightness is not None:
        x = _blend(x, 0.0, brightness)
    if contrast is not None:
        x = _blend(x, F.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), contrast)
    if saturation is not None:
        x = _blend(x, F.rgb_to_grayscale(x), saturation)
    return x


# --------------------------------------------------------------------------- task assembly


def limit_rows(rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` of ``rows``: a seeded random subset, kept in ascending order."""
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"option limit must be a positive integer or null, got {limit!r}")


@dataclass
class ImageTable:
    """Everything a loader knows about its rows before decoding: one entry per row."""

    image_dir: Path
    files: list[str]  # image file names relative to image_dir
    y: np.ndarray
    s: np.ndarray
    index: np.ndarray  # row ids in the source listing


def assemble(name: str, table: ImageTable, parts: Sequence[np.ndarray], *, size: int,
             resize: int | None, limit: int | None, seed: int, target: str, sensitive: str,
             num_classes: int, group_names: dict[int, str], class_names: list[str] | None,
             meta: dict[str, Any]) -> TaskData:
    """Limit the split rows, decode their images (cached), drop unreadable ones, build TaskData.

    ``parts`` are positions into ``table`` for train, val and test.
    """
    size, resize = check_geometry(size, resize)
    check_limit(limit)
    parts = [limit_rows(np.asarray(p, dtype=np.int64), limit, seed + i) for i, p in enumerate(parts)]
    used = np.unique(np.concatenate(parts))
    images = decode_images(name, table.image_dir, [table.files[i] for i in used], size, resize)
    ok = np.zeros(len(table.files), dtype=bool)
    ok[used[images.kept]] = True
    where = np.full(len(table.files), -1, dtype=np.int64)
    where[used] = np.arange(len(used))
    splits = []
    for p in parts:
        p = p[ok[p]]
        splits.append(Split(images.view(where[p]), table.y[p].astype(np.int64),
                            table.s[p].astype(np.int64), table.index[p].astype(np.int64)))
    meta = dict(meta)
    meta.setdefault("skipped", {})["unreadable"] = len(images.failed)
    meta.update(size=size, resize=resize, limit=limit, images_decoded=images.decoded,
                image_cache=str(images.path), normalisation="none: pixels / 255")
    meta["group_counts"] = {n: sp.group_counts() for n, sp in zip(("train", "val", "test"), splits)}
    return TaskData(name=name, train=splits[0], val=splits[1], test=splits[2],
                    num_classes=num_classes, input_shape=(3, size, size), target=target,
                    sensitive=sensitive, group_names=group_names, class_names=class_names,
                    transform=ImageBatchTransform(), meta=meta)
