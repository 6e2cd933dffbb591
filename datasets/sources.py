"""Where each dataset comes from: official URLs, pinned SHA-256 checksums and row counts.

Paths are relative to the data root and follow the upstream layout the loaders read. The
checksums are those of the files as their owners publish them (UCI, ProPublica). CelebA and
UTKFace are licensed for manual download only: they carry instructions instead of URLs.

``FAIRSQUEEZE_DATA_MIRROR`` (a base URL) replaces every official URL by ``MIRROR/<path>``,
e.g. ``http://127.0.0.1:8000/adult/adult.data``: a local copy of the data root served over
HTTP (how the tests run without the internet, and how a site without outside access can
serve one shared copy). Checksums are verified all the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

MIRROR_ENV = "FAIRSQUEEZE_DATA_MIRROR"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # under the data root
    url: str
    sha256: str | None  # None: the upstream file is not versioned, so only its shape is checked
    rows: int | None = None  # data rows (non-empty lines after `skip` leading lines)
    skip: int = 0  # leading lines that are not data rows (a CSV header, adult.test's comment)
    optional: bool = False  # documentation the loader does not read

    def source(self) -> str:
        mirror = os.environ.get(MIRROR_ENV)
        return f"{mirror.rstrip('/')}/{self.path}" if mirror else self.url


@dataclass(frozen=True)
class DatasetSource:
    name: str  # the task name
    files: tuple[RemoteFile, ...] = ()
    manual: str = ""  # for datasets that cannot be fetched: what to download and where to put it
    images: str = ""  # image folder filled from the URLs listed in the CSV (Fitzpatrick-17k)
    images_also: tuple[str, ...] = ()  # other image folders the loader accepts in its place
    layout: tuple[str, ...] = ()  # files and folders a manual download must provide

    @property
    def fetchable(self) -> bool:
        return not self.manual


UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases"

SOURCES: dict[str, DatasetSource] = {
    s.name: s
    for s in (
        DatasetSource("adult", (
            RemoteFile("adult/adult.data", f"{UCI}/adult/adult.data",
                       "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d", rows=32_561),
            RemoteFile("adult/adult.test", f"{UCI}/adult/adult.test",
                       "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05", rows=16_281, skip=1),
            RemoteFile("adult/adult.names", f"{UCI}/adult/adult.names",
                       "c248284c0b5de30c9e1958d6cdd168a34a654758b620e68f46aefa83fc0a576a", optional=True),
        )),
        DatasetSource("compas", (
            RemoteFile("compas/compas-scores-two-years.csv",
                       "https://raw.githubusercontent.com/propublica/compas-analysis/master/compas-scores-two-years.csv",
                       "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d", rows=7_214, skip=1),
        )),
        DatasetSource("german", (
            RemoteFile("german/german.data", f"{UCI}/statlog/german/german.data",
                       "b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871", rows=1_000),
        )),
        DatasetSource("fitzpatrick", (
            # the repository's CSV is not versioned by release, so no checksum; 16,577 images listed
            RemoteFile("fitzpatrick17k/fitzpatrick17k.csv",
                       "https://raw.githubusercontent.com/mattgroh/fitzpatrick17k/main/fitzpatrick17k.csv",
                       None, rows=16_577, skip=1),
        ), images="fitzpatrick17k/images", images_also=("fitzpatrick17k/data/finalfitz17k",)),
        DatasetSource("celeba", manual=(
            "CelebA's licence asks for a manual download: from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
            "get img_align_celeba.zip, list_attr_celeba.txt, list_eval_partition.txt and identity_CelebA.txt and "
            "put them (the zip unpacked) under {root}/celeba/"),
            layout=("celeba/img_align_celeba", "celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt",
                    "celeba/identity_CelebA.txt")),
        DatasetSource("utkface", manual=(
            "UTKFace's licence asks for a manual download: from https://susanqq.github.io/UTKFace/ get the aligned "
            "and cropped faces (UTKFace.tar.gz) and unpack them so the images lie in {root}/utkface/UTKFace/"),
            layout=("utkface/UTKFace",)),
    )
}
