"""Fetch datasets into the data root (``fairsqueeze data fetch``) and check what is there
(``fairsqueeze data check``).

Downloads go through pooch's HTTP downloader into a hidden ``.<name>.*.part`` file beside the
target; the file takes its real name (an atomic rename) only once it is complete and its
SHA-256 matches the pinned one, so a failed or interrupted download never leaves a file where
a loader reads. A rerun skips every file that is already there and verified.

Fitzpatrick-17k: the CSV first, then each listed image from its ``url`` column, in parallel
with retries, saved as ``images/<md5hash>.jpg`` once it decodes. Unreachable images are
counted and listed in ``fitzpatrick17k/unreachable.csv``, never fatal.
"""
from __future__ import annotations

import csv
import hashlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pooch
import requests
from PIL import Image

from fairsqueeze.core.errors import FairsqueezeError, UnknownName
from fairsqueeze.core.progress import progress_bar

from .sources import SOURCES, DatasetSource, RemoteFile

USER_AGENT = "fairsqueeze-data-fetch"
TIMEOUT_S = 30
IMAGE_WORKERS = 16
IMAGE_ATTEMPTS = 3
UNREACHABLE = "unreachable.csv"


class DownloadError(FairsqueezeError):
    """A file could not be downloaded or did not match its checksum; the message is one line."""


@dataclass
class Status:
    name: str
    state: str  # present | missing | corrupt
    detail: str

    def line(self) -> str:
        return f"{self.name:12s} {self.state:8s} {self.detail}"


def sources(names: Iterable[str]) -> list[DatasetSource]:
    """The registry entries of ``names`` (all of them when empty), refusing unknown names."""
    names = list(names) or list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise UnknownName(f"unknown dataset {unknown[0]!r} (known: {', '.join(SOURCES)})")
    return [SOURCES[n] for n in dict.fromkeys(names)]


# -- checking ------------------------------------------------------------------------------
def count_rows(path: Path, skip: int = 0) -> int:
    with open(path, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(0, lines - skip)


def file_problem(root: Path, spec: RemoteFile) -> str | None:
    """None when the file is there with its checksum and row count, else what is wrong."""
    path = root / spec.path
    if not path.is_file():
        return "missing"
    if spec.sha256:
        actual = pooch.file_hash(str(path), alg="sha256")
        if actual != spec.sha256:
            return f"checksum mismatch: expected sha256 {spec.sha256}, got {actual}"
    if spec.rows is not None:
        rows = count_rows(path, spec.skip)
        if rows != spec.rows:
            return f"{rows:,} rows, expected {spec.rows:,}"
    return None


def how_to_get(source: DatasetSource, root: Path) -> str:
    return source.manual.format(root=root) if source.manual else f"get it with: fairsqueeze data fetch {source.name}"


def check(source: DatasetSource, root: Path) -> Status:
    """present / missing / corrupt, with what was verified or what is wrong and how to fix it."""
    root = Path(root)
    how = how_to_get(source, root)
    if source.manual:
        return _check_manual(source, root, how)
    problems = {f.path: file_problem(root, f) for f in source.files}
    required = [f for f in source.files if not f.optional]
    if all(problems[f.path] == "missing" for f in required):
        return Status(source.name, "missing", f"{root / required[0].path} not found; {how}")
    bad = [(path, p) for path, p in problems.items() if p and p != "missing"]
    if bad:
        path, problem = bad[0]
        return Status(source.name, "corrupt", f"{path}: {problem}; {how}")
    lacking = [f.path for f in required if problems[f.path]]
    if lacking:
        return Status(source.name, "missing", f"{lacking[0]} not found; {how}")
    verified = ", ".join(f"{f.path} ({f.rows:,} rows)" if f.rows else f.path
                         for f in source.files if not problems[f.path])
    detail = f"{verified}; checksums verified" if any(f.sha256 for f in source.files) else verified
    if source.images:
        listed, present = _image_counts(root, source)
        if present == 0:
            return Status(source.name, "missing", f"no images under {image_folder(root, source)}; {how}")
        detail += f"; {present:,} of {listed:,} listed images present"
        if present < listed:
            detail += f" (the rest: rerun fairsqueeze data fetch {source.name}, see {UNREACHABLE})"
    return Status(source.name, "present", detail)


def image_folder(root: Path, source: DatasetSource) -> Path:
    """Where the images are: the first folder the loader accepts that exists, else the default."""
    found = [root / p for p in (source.images, *source.images_also) if (root / p).is_dir()]
    return found[0] if found else root / source.images


def _image_counts(root: Path, source: DatasetSource) -> tuple[int, int]:
    listed = {r["md5hash"] for r in _image_rows(root / source.files[0].path)}
    folder = image_folder(root, source)
    on_disk = {p[:-4] for p in os.listdir(folder) if p.endswith(".jpg")} if folder.is_dir() else set()
    return len(listed), len(listed & on_disk)


def _check_manual(source: DatasetSource, root: Path, how: str) -> Status:
    lacking = [p for p in source.layout if not (root / p).exists()]
    if lacking:
        return Status(source.name, "missing", f"{root / lacking[0]} not found; {how}")
    folder = root / source.layout[0]
    images = {p for p in os.listdir(folder) if p.endswith(".jpg")}
    if not images:
        return Status(source.name, "missing", f"no .jpg images in {folder}; {how}")
    if source.name == "celeba":
        return _check_celeba(root, images, how)
    return Status(source.name, "present", f"{len(images):,} images in {source.layout[0]}")


def _check_celeba(root: Path, images: set[str], how: str) -> Status:
    """CelebA's own consistency: the attribute file's declared row count, one partition and
    identity row per image, and every listed image on disk."""
    folder = root / "celeba"
    with open(folder / "list_attr_celeba.txt", encoding="utf-8") as fh:
        declared = fh.readline().strip()
        fh.readline()  # the 40 attribute names
        listed = [line.split()[0] for line in fh if line.strip()]
    if not declared.isdigit() or int(declared) != len(listed):
        return Status("celeba", "corrupt", f"celeba/list_attr_celeba.txt declares {declared} rows but lists "
                                           f"{len(listed):,}; {how}")
    for name in ("list_eval_partition.txt", "identity_CelebA.txt"):
        rows = count_rows(folder / name)
        if rows < len(listed):
            return Status("celeba", "corrupt", f"celeba/{name} has {rows:,} rows for {len(listed):,} images; {how}")
    absent = [f for f in listed if f not in images]
    if absent:
        return Status("celeba", "corrupt", f"{len(absent):,} of {len(listed):,} listed images are not in "
                                           f"celeba/img_align_celeba (first: {absent[0]}); {how}")
    return Status("celeba", "present", f"{len(listed):,} images, attributes, partition and identities consistent")


# -- downloading ---------------------------------------------------------------------------
def _downloader() -> pooch.HTTPDownloader:
    return pooch.HTTPDownloader(progressbar=False, timeout=TIMEOUT_S, headers={"User-Agent": USER_AGENT})


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection dropped mid-transfer"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (no network?)"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def download(url: str, target: Path, sha256: str | None = None,
             accept: Callable[[Path], None] | None = None) -> None:
    """Download ``url`` to ``target`` through a hidden part file; it takes the target's name only
    when complete, matching ``sha256`` and passing ``accept`` (which raises to reject)."""
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        try:
            _downloader()(url, part, None)
        except requests.RequestException as exc:
            raise DownloadError(f"cannot download {target.name} from {url}: {_reason(exc)}") from None
        if sha256:
            actual = pooch.file_hash(part, alg="sha256")
            if actual != sha256:
                raise DownloadError(f"{target}: checksum mismatch: expected sha256 {sha256}, got {actual}")
        if accept:
            accept(Path(part))
        os.replace(part, target)
    finally:
        if os.path.exists(part):
            os.unlink(part)
        if created and not any(target.parent.iterdir()):  # a failed first download leaves no empty folder
            target.parent.rmdir()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def fetch(source: DatasetSource, root: Path, say: Callable[[str], None] = print,
          complain: Callable[[str], None] = _to_stderr) -> bool:
    """Fetch what is missing or corrupt of one dataset; True when it is complete afterwards.
    What was fetched is one line through ``say``, every problem one line through ``complain``
    (stderr); nothing raises for a network failure."""
    root = Path(root)
    if source.manual:
        complain(f"{source.name}: not fetched, {how_to_get(source, root)}")
        return False
    for spec in source.files:
        problem = file_problem(root, spec)
        if problem is None:
            continue
        if problem != "missing":
            complain(f"{source.name}: {spec.path}: {problem}; downloading it again")
        try:
            download(spec.source(), root / spec.path, spec.sha256)
        except DownloadError as exc:
            complain(f"{source.name}: {exc}" + ("; optional, the loader does not read it" if spec.optional else ""))
            if spec.optional:
                continue
            return False
        except OSError as exc:
            complain(f"{source.name}: cannot write {root / spec.path}: {exc.strerror or exc}")
            return False
        problem = file_problem(root, spec)
        if problem:
            complain(f"{source.name}: {spec.path} downloaded from {spec.source()} but {problem}")
            return False
        say(f"{source.name}: {spec.path} fetched" + (" and verified" if spec.sha256 else ""))
    if source.images:
        report = fetch_images(root / source.files[0].path, image_folder(root, source))
        say(f"{source.name}: {report.summary()}")
    return True


# -- Fitzpatrick-17k images ----------------------------------------------------------------
@dataclass
class ImageReport:
    listed: int = 0
    already: int = 0
    fetched: int = 0
    content_hash_matches: int = 0  # fetched images whose md5 of content equals the CSV's md5hash
    unreachable: list[tuple[str, str, str]] = field(default_factory=list)  # (md5hash, url, reason)
    listing: Path | None = None

    def summary(self) -> str:
        text = (f"{self.listed:,} images listed: {self.already:,} already present, {self.fetched:,} fetched "
                f"({self.content_hash_matches:,} of them with an md5 of content equal to their md5hash), "
                f"{len(self.unreachable):,} unreachable")
        if self.unreachable:
            text += f", listed in {self.listing}; rerun to retry them"
        return text


def _image_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "md5hash" not in rows[0]:
        raise DownloadError(f"{csv_path}: no md5hash column")
    return rows


def _decodable(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL raises several types for bad bytes
        raise DownloadError(f"not a decodable image ({type(exc).__name__})") from None


def _fetch_image(url: str, target: Path, attempts: int, pause_s: float) -> str | None:
    """None when saved, else why not. Retries connection failures and server errors, not 4xx."""
    if not url.startswith(("http://", "https://")):
        return "no url"
    reason = ""
    for attempt in range(attempts):
        try:
            download(url, target, accept=_decodable)
            return None
        except DownloadError as exc:
            reason = str(exc).rsplit(": ", 1)[-1]
            if "HTTP 4" in reason or "decodable" in reason:
                return reason
        if attempt + 1 < attempts:
            time.sleep(pause_s * 2 ** attempt)
    return reason


def fetch_images(csv_path: Path, image_dir: Path, workers: int = IMAGE_WORKERS, attempts: int = IMAGE_ATTEMPTS,
                 pause_s: float = 0.5) -> ImageReport:
    """Fetch every listed image that is not on disk yet; write the unreachable ones to a list."""
    rows = _image_rows(csv_path)
    image_dir.mkdir(parents=True, exist_ok=True)
    on_disk = set(os.listdir(image_dir))
    report = ImageReport(listed=len(rows))
    todo = []
    for row in rows:
        if f"{row['md5hash']}.jpg" in on_disk:
            report.already += 1
        else:
            todo.append(row)

    def one(row: dict[str, str]) -> tuple[dict[str, str], str | None]:
        return row, _fetch_image((row.get("url") or "").strip(), image_dir / f"{row['md5hash']}.jpg", attempts,
                                 pause_s)

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            progress_bar(total=len(todo), desc="fitzpatrick images", unit="img") as bar:
        for row, reason in pool.map(one, todo):
            bar.update(1)
            if reason is not None:
                report.unreachable.append((row["md5hash"], row.get("url") or "", reason))
                continue
            report.fetched += 1
            with open(image_dir / f"{row['md5hash']}.jpg", "rb") as fh:
                report.content_hash_matches += hashlib.md5(fh.read()).hexdigest() == row["md5hash"]
    report.listing = csv_path.parent / UNREACHABLE
    if report.unreachable:
        with open(report.listing, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["md5hash", "url", "reason"])
            writer.writerows(report.unreachable)
    elif report.listing.exists():
        report.listing.unlink()
    return report
