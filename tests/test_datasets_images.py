"""Image tasks: the decoded-image cache, batch transforms, and the CelebA / UTKFace / Fitzpatrick loaders.

Real-data tests read FAIRSQUEEZE_DATA (marked ``data``, skipped when absent). CelebA is decoded
in full once per session at 32 px into a temporary cache; everything else uses ``limit`` or
generated fixtures.
"""
from __future__ import annotations

import csv
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairsqueeze.datasets import celeba, fitzpatrick, images, utkface
from fairsqueeze.core.errors import ConfigError, DatasetMissing
from fairsqueeze.datasets.base import CACHE_ENV, DATA_ENV

DATA = Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None


def real_data(folder: str):
    """Mark a test as needing ``<data root>/<folder>``; skip it when that is absent."""
    missing = DATA is None or not (DATA / folder).is_dir()

    def mark(fn):
        fn = pytest.mark.data(fn)
        return pytest.mark.skipif(missing, reason=f"{DATA_ENV}/{folder} not available")(fn)

    return mark


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    """A small random RGB JPEG; a gradient keeps it asymmetric so flips are visible."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // 2
    pixels[..., 0] += np.linspace(0, 120, w, dtype=np.uint8)[None, :]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


# --------------------------------------------------------------------------- cache


def test_decode_policy_resizes_shorter_side_then_center_crops(tmp_path):
    path = tmp_path / "wide.png"  # PNG: lossless, so pixel positions can be checked
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255  # left half black, right half white
    Image.fromarray(pixels).save(path)
    out = images.decode_image(path, size=8, resize=10)  # 20x40 -> 10x20, centre 8x8 = columns 6..13
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    assert out[:, :, 0].max() < 30 and out[:, :, -1].min() > 225
    assert images.default_resize(112) == 128 and images.default_resize(32) == 37


def test_cache_is_reused_and_skips_unreadable_images(tmp_path, cache, caplog):
    folder = tmp_path / "imgs"
    for i in range(4):
        write_jpeg(folder / f"{i}.jpg", seed=i)
    (folder / "bad.jpg").write_bytes(b"not a jpeg at all")
    truncated = (folder / "0.jpg").read_bytes()[:200]
    (folder / "cut.jpg").write_bytes(truncated)
    files = ["3.jpg", "bad.jpg", "0.jpg", "cut.jpg", "1.jpg", "2.jpg"]

    with caplog.at_level(logging.WARNING, logger="fairsqueeze.datasets.images"):
        first = images.decode_images("t", folder, files, size=16)
    assert first.decoded == 6
    assert sorted(first.failed) == ["bad.jpg", "cut.jpg"]
    assert list(first.kept) == [0, 2, 4, 5]
    assert "skipped 2 unreadable" in caplog.text and "bad.jpg" in caplog.text

    before = images.decoded_total()
    second = images.decode_images("t", folder, list(reversed(files)), size=16)
    assert second.decoded == 0 and images.decoded_total() == before
    assert second.path == first.path and sorted(second.failed) == sorted(first.failed)
    # Rows follow the caller's order whatever order the cache stores them in.
    x = first.view(first.kept)[:]
    expected = [images.decode_image(folder / files[i], 16, images.default_resize(16)) for i in first.kept]
    np.testing.assert_array_equal(x, np.stack(expected))
    assert isinstance(np.load(first.path, mmap_mode="r"), np.memmap)
    assert sorted(p.suffix for p in (cache / "images").iterdir()) == [".json", ".npy"]


def test_cache_key_changes_with_resolution_and_file_content(tmp_path, cache):
    folder = tmp_path / "imgs"
    for i in range(2):
        write_jpeg(folder / f"{i}.jpg", seed=i)
    a = images.decode_images("t", folder, ["0.jpg", "1.jpg"], size=16)
    assert images.decode_images("t", folder, ["0.jpg", "1.jpg"], size=16, resize=24).path != a.path
    write_jpeg(folder / "1.jpg", seed=7, size=(50, 30))
    rebuilt = images.decode_images("t", folder, ["0.jpg", "1.jpg"], size=16)
    assert rebuilt.path != a.path and rebuilt.decoded == 2


def test_crash_while_decoding_leaves_no_cache(tmp_path, cache, monkeypatch):
    folder = tmp_path / "imgs"
    for i in range(3):
        write_jpeg(folder / f"{i}.jpg", seed=i)
    calls = []

    def failing(path, size, resize):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # not an image error: must abort the build
        return np.zeros((3, size, size), np.uint8)

    monkeypatch.setattr(images, "_try_decode", failing)
    with pytest.raises(KeyboardInterrupt):
        images.decode_images("t", folder, ["0.jpg", "1.jpg", "2.jpg"], size=8, workers=1)
    assert list((cache / "images").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert images.decode_images("t", folder, ["0.jpg", "1.jpg", "2.jpg"], size=8).decoded == 3


def test_image_rows_index_like_numpy_and_pickle_without_pixels(tmp_path):
    data = np.arange(6 * 3 * 4 * 4, dtype=np.uint8).reshape(6, 3, 4, 4)
    path = tmp_path / "a.npy"
    np.save(path, data)
    rows = np.array([5, 1, 3, 0])
    view = images.ImageRows(path, rows)
    assert view.shape == (4, 3, 4, 4) and len(view) == 4 and view.dtype == np.uint8
    np.testing.assert_array_equal(view[1], data[1])
    np.testing.assert_array_equal(view[1:3], data[[1, 3]])
    np.testing.assert_array_equal(view[np.array([3, 0, 0])], data[[0, 5, 5]])
    np.testing.assert_array_equal(view[torch.tensor([2])], data[[3]])
    np.testing.assert_array_equal(view[:, 0], data[rows, 0])
    np.testing.assert_array_equal(np.asarray(view), data[rows])
    clone = pickle.loads(pickle.dumps(view))
    assert len(pickle.dumps(view)) < 1000
    np.testing.assert_array_equal(clone[:], data[rows])


# --------------------------------------------------------------------------- transforms


def test_eval_transform_only_scales():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    out = images.ImageBatchTransform()(x, train=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float() / 255)


def test_train_transform_flips_each_image_independently():
    img = torch.arange(8, dtype=torch.uint8).repeat(3, 8, 1) * 30  # ramps left to right
    batch = img.expand(32, -1, -1, -1)
    flip_only = images.ImageBatchTransform(brightness=0, contrast=0, saturation=0)
    torch.manual_seed(0)
    out = flip_only(batch, train=True)
    flipped = [torch.equal(o, img.flip(-1).float() / 255) for o in out]
    kept = [torch.equal(o, img.float() / 255) for o in out]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_train_jitter_matches_torchvision_per_image():
    from fairsqueeze.core.vision import torchvision  # noqa: F401
    from torchvision.transforms.v2 import functional as F

    x = torch.rand(4, 3, 8, 8)
    b, c, s = torch.rand(3, 4) * 0.4 + 0.8
    expected = torch.stack([
        F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(i, float(bi)), float(ci)), float(si))
        for i, bi, ci, si in zip(x, b, c, s)
    ])
    torch.testing.assert_close(images.jitter(x, b, c, s), expected)
    torch.manual_seed(1)
    a = images.ImageBatchTransform()(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), True)
    assert a.min() >= 0 and a.max() <= 1


# --------------------------------------------------------------------------- CelebA


@pytest.fixture(scope="session")
def celeba_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("celeba-cache")


@pytest.fixture(scope="session")
def celeba_official(celeba_cache):
    """The whole shared subset at 32 px, decoded once per session."""
    if DATA is None or not (DATA / "celeba").is_dir():
        pytest.skip("CelebA not available")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(celeba_cache))
        return celeba.build_celeba(DATA, size=32)


def read_attr_rows() -> tuple[list[str], list[tuple[str, list[int]]]]:
    """The attribute file, parsed here independently of the loader."""
    lines = (DATA / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    rows = [(parts[0], [int(v) for v in parts[1:]]) for parts in (line.split() for line in lines[2:])]
    return names, rows


@real_data("celeba")
def test_celeba_official_partition_sizes(celeba_official):
    data = celeba_official
    assert [len(data.train), len(data.val), len(data.test)] == [4560, 780, 660]
    assert data.input_shape == (3, 32, 32) and data.train.x.shape == (4560, 3, 32, 32)
    assert data.num_classes == 2 and data.group_names == {0: "not Male", 1: "Male"}
    assert data.meta["skipped"] == {"not_in_split_file": 0, "missing_image": 0, "unreadable": 0}
    batch = data.prepare(data.test.x[:5], train=False)
    assert batch.shape == (5, 3, 32, 32) and batch.dtype == torch.float32 and batch.max() <= 1


@real_data("celeba")
def test_celeba_labels_and_pixels_match_the_files(celeba_official):
    names, rows = read_attr_rows()
    smiling, male = names.index("Smiling"), names.index("Male")
    for split in (celeba_official.train, celeba_official.val, celeba_official.test):
        for k in (0, len(split) // 2, len(split) - 1):
            file, values = rows[split.index[k]]
            assert split.y[k] == (values[smiling] == 1)
            assert split.s[k] == (values[male] == 1)
    k = 7
    file, _ = rows[celeba_official.val.index[k]]
    expected = images.decode_image(DATA / "celeba" / "img_align_celeba" / file, 32, 37)
    np.testing.assert_array_equal(celeba_official.val.x[k], expected)


@real_data("celeba")
def test_celeba_second_build_decodes_nothing(celeba_official, celeba_cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(celeba_cache))
    before = images.decoded_total()
    again = celeba.build_celeba(DATA, size=32)
    assert again.meta["images_decoded"] == 0 and images.decoded_total() == before
    assert again.split_hash == celeba_official.split_hash
    np.testing.assert_array_equal(again.test.x[:50], celeba_official.test.x[:50])


@real_data("celeba")
def test_celeba_identity_split_is_identity_disjoint(celeba_official, celeba_cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(celeba_cache))  # same images as the official split: no decoding
    data = celeba.build_celeba(DATA, size=32, split="identity", split_seed=3)
    assert data.meta["images_decoded"] == 0
    identity = dict(line.split() for line in (DATA / "celeba" / "identity_CelebA.txt").read_text().splitlines())
    _, rows = read_attr_rows()
    people = [{identity[rows[i][0]] for i in split.index} for split in (data.train, data.val, data.test)]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
    assert [len(p) for p in people] == [120, 40, 40]
    assert len(data.train) + len(data.val) + len(data.test) == 6000
    other = celeba.build_celeba(DATA, size=32, split="identity", split_seed=4)
    assert other.split_hash != data.split_hash


@real_data("celeba")
def test_celeba_limit_is_deterministic_and_other_attributes_work(cache):
    a = celeba.build_celeba(DATA, target="Eyeglasses", sensitive="Young", size=16, limit=20)
    b = celeba.build_celeba(DATA, target="Eyeglasses", sensitive="Young", size=16, limit=20)
    assert [len(a.train), len(a.val), len(a.test)] == [20, 20, 20]
    assert a.split_hash == b.split_hash and b.meta["images_decoded"] == 0
    names, rows = read_attr_rows()
    glasses = names.index("Eyeglasses")
    assert all(y == (rows[i][1][glasses] == 1) for i, y in zip(a.train.index, a.train.y))


@real_data("celeba")
def test_celeba_rejects_unknown_attribute():
    with pytest.raises(ConfigError, match="Male") as err:
        celeba.build_celeba(DATA, sensitive="Mal")
    assert "40 in all" in str(err.value)
    with pytest.raises(ConfigError, match="split"):
        celeba.build_celeba(DATA, split="random")


def test_celeba_missing_files_name_the_path(tmp_path):
    with pytest.raises(DatasetMissing, match="img_align_celeba"):
        celeba.build_celeba(tmp_path)


# --------------------------------------------------------------------------- UTKFace


@real_data("utkface")
def test_utkface_parses_all_but_the_two_malformed_names():
    faces, malformed = utkface.read_faces(DATA / "utkface" / "UTKFace")
    assert len(faces) == 9780 - 2 and len(malformed) == 2


@real_data("utkface")
def test_utkface_task_labels_come_from_file_names(cache, caplog):
    with caplog.at_level(logging.WARNING):
        data = utkface.build_utkface(DATA, size=16, limit=30)
    assert "skipped 2 file(s)" in caplog.text
    assert data.meta["skipped"]["malformed_name"] == 2
    assert [len(data.train), len(data.val), len(data.test)] == [30, 30, 30]
    faces, _ = utkface.read_faces(DATA / "utkface" / "UTKFace")
    for split in (data.train, data.test):
        for i, y, s in zip(split.index, split.y, split.s):
            assert y == faces[i].gender and s == (faces[i].race == 0)
    assert data.group_names == {0: "non-White", 1: "White"}

    by_age = utkface.build_utkface(DATA, target="age_bucket", sensitive="race", size=16, limit=30)
    assert by_age.num_classes == 2 and len(by_age.group_names) == 5
    assert all(y == (faces[i].age >= 30) and s == faces[i].race
               for i, y, s in zip(by_age.val.index, by_age.val.y, by_age.val.s))


def test_utkface_name_parsing_and_options(tmp_path):
    assert utkface.parse_name("25_1_3_20170119.jpg.chip.jpg") == ("25_1_3_20170119.jpg.chip.jpg", 25, 1, 3)
    assert utkface.parse_name("61_1_20170109142408075.jpg.chip.jpg") is None
    assert utkface.parse_name("30_2_0_1.jpg") is None  # gender out of range
    with pytest.raises(ConfigError, match="same attribute"):
        utkface.build_utkface(tmp_path, target="race")
    with pytest.raises(DatasetMissing, match="UTKFace"):
        utkface.build_utkface(tmp_path)


# --------------------------------------------------------------------------- Fitzpatrick (generated fixture)

FITZ_ROWS = [  # md5hash, skin type, label, nine, three; image state
    ("a0", 1, "acne", "inflammatory", "non-neoplastic", "ok"),
    ("a1", 2, "acne", "inflammatory", "non-neoplastic", "ok"),
    ("a2", 5, "acne", "inflammatory", "non-neoplastic", "ok"),
    ("a3", 6, "acne", "inflammatory", "non-neoplastic", "ok"),
    ("a4", -1, "acne", "inflammatory", "non-neoplastic", "ok"),
    ("e0", 3, "eczema", "inflammatory", "non-neoplastic", "ok"),
    ("e1", 4, "eczema", "inflammatory", "non-neoplastic", "ok"),
    ("e2", 2, "eczema", "inflammatory", "non-neoplastic", "corrupt"),
    ("e3", 5, "eczema", "inflammatory", "non-neoplastic", "ok"),
    ("m0", 1, "melanoma", "malignant melanoma", "malignant", "ok"),
    ("m1", 4, "melanoma", "malignant melanoma", "malignant", "ok"),
    ("m2", -1, "melanoma", "malignant melanoma", "malignant", "ok"),
    ("n0", 3, "nevus", "benign dermal", "benign", "ok"),
    ("v0", 6, "vitiligo", "genodermatoses", "non-neoplastic", "missing"),
]


def make_fitzpatrick(root: Path, image_dir: str = "images") -> Path:
    folder = root / "fitzpatrick17k"
    folder.mkdir(parents=True)
    with open(folder / "fitzpatrick17k.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label",
                      "nine_partition_label", "three_partition_label", "qc", "url", "url_alphanum"])
        for i, (md5, skin, label, nine, three, state) in enumerate(FITZ_ROWS):
            out.writerow([md5, skin, skin, label, nine, three, "", f"https://example.org/{md5}.jpg", md5])
            path = folder / image_dir / f"{md5}.jpg"
            if state == "ok":
                write_jpeg(path, seed=i, size=(30 + i, 24))
            elif state == "corrupt":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\xff\xd8 broken")
    return root


def test_fitzpatrick_fixture_classes_groups_and_skips(tmp_path, cache, caplog):
    root = make_fitzpatrick(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        data = fitzpatrick.build_fitzpatrick(root, size=16)
    # Classes come from the whole CSV: vitiligo counts although its only image is missing.
    assert data.class_names == ["acne", "eczema", "melanoma", "nevus", "vitiligo"]
    assert data.num_classes == 5 and data.input_shape == (3, 16, 16)
    assert data.meta["skipped"] == {"missing_image": 1, "unreadable": 1}
    assert "e2.jpg" in caplog.text and "missing" in caplog.text

    parts = [data.train.index, data.val.index, data.test.index]
    every = np.concatenate(parts)
    assert len(every) == len(set(every.tolist()))
    expected = [i for i, row in enumerate(FITZ_ROWS) if row[5] == "ok"]
    assert sorted(every.tolist()) == expected
    groups = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, -1: -1}
    for split in (data.train, data.val, data.test):
        for i, y, s in zip(split.index, split.y, split.s):
            md5, skin, label = FITZ_ROWS[i][:3]
            assert data.class_names[y] == label and s == groups[skin]
            np.testing.assert_array_equal(
                split.x[list(split.index).index(i)],
                images.decode_image(root / "fitzpatrick17k" / "images" / f"{md5}.jpg", 16, 18))
    assert (np.concatenate([data.train.s, data.val.s, data.test.s]) == -1).sum() == 2

    again = fitzpatrick.build_fitzpatrick(root, size=16)
    assert again.meta["images_decoded"] == 0 and again.split_hash == data.split_hash


def test_fitzpatrick_other_targets_and_layout_variant(tmp_path, cache):
    root = make_fitzpatrick(tmp_path / "data", image_dir="data/finalfitz17k")
    three = fitzpatrick.build_fitzpatrick(root, target="three", size=8)
    assert three.class_names == ["benign", "malignant", "non-neoplastic"]
    nine = fitzpatrick.build_fitzpatrick(root, target="nine", size=8)
    assert nine.num_classes == 4
    with pytest.raises(ConfigError, match="target"):
        fitzpatrick.build_fitzpatrick(root, target="low")


def test_fitzpatrick_split_pools_rare_classes():
    y = np.array([0] * 10 + [1] * 5 + [2, 2, 3])
    parts = fitzpatrick.split_by_class(y, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    assert [int((y[parts[0]] == c).sum()) for c in (0, 1)] == [6, 3]
    assert fitzpatrick.skin_group(np.array([1, 3, 4, 6, -1, 0, 7])).tolist() == [0, 0, 1, 1, -1, -1, -1]


def test_fitzpatrick_missing_files_name_the_path(tmp_path):
    with pytest.raises(DatasetMissing, match="fitzpatrick17k.csv"):
        fitzpatrick.build_fitzpatrick(tmp_path)
    (tmp_path / "fitzpatrick17k").mkdir()
    (tmp_path / "fitzpatrick17k" / "fitzpatrick17k.csv").write_text(
        "md5hash,fitzpatrick_scale,label,nine_partition_label,three_partition_label\n")
    with pytest.raises(DatasetMissing, match="images"):
        fitzpatrick.build_fitzpatrick(tmp_path)
