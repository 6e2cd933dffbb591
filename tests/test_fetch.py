"""Dataset fetching and checking, against a local HTTP server on 127.0.0.1 (never the internet).

The tabular files are served from the real upstream copies under ``$FAIRSQUEEZE_DATA`` (the
data root CI sets) and pointed at with FAIRSQUEEZE_DATA_MIRROR; the Fitzpatrick-17k image list is
generated here. Expected hashes come from the data folder's own SHA256SUMS, not from the package.
"""
import csv
import dataclasses
import hashlib
import io
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from fairsqueeze.cli.main import main
from fairsqueeze.datasets.fetch import check, fetch
from fairsqueeze.datasets.sources import SOURCES, RemoteFile

UPSTREAM = Path(os.environ.get("FAIRSQUEEZE_DATA", "data"))
TABULAR = ("adult", "compas", "german")
needs_upstream = pytest.mark.skipif(not (UPSTREAM / "SHA256SUMS").exists(),
                                    reason=f"upstream data copies not found under {UPSTREAM} (set FAIRSQUEEZE_DATA)")


class Mirror:
    """Serves ``files`` (url path -> bytes) and, for other paths, files under ``folder``.
    ``interrupt``: paths answered with half their bytes (full Content-Length) then a closed
    connection, once each; ``flaky``: paths answered 503 once; ``gone``: 404; every request is counted."""

    def __init__(self, folder: Path | None = None):
        self.folder, self.files, self.interrupt, self.flaky, self.gone, self.hits = folder, {}, set(), set(), set(), {}
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                mirror.hits[path] = mirror.hits.get(path, 0) + 1
                body = mirror.files.get(path)
                if body is None and mirror.folder and (mirror.folder / path).is_file() and path not in mirror.gone:
                    body = (mirror.folder / path).read_bytes()
                if path in mirror.flaky:
                    mirror.flaky.discard(path)
                    self.send_error(503)
                    return
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in mirror.interrupt:
                    mirror.interrupt.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(monkeypatch):
    server = Mirror(UPSTREAM)
    monkeypatch.setenv("FAIRSQUEEZE_DATA_MIRROR", server.url)
    yield server
    server.close()


def upstream_sha256() -> dict[str, str]:
    sums = {}
    for line in (UPSTREAM / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(None, 1)
        sums[name.removeprefix("./")] = digest
    return sums


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*.part")]


@needs_upstream
def test_fetch_tabular_sets_verifies_them_and_a_rerun_downloads_nothing(mirror, tmp_path, capsys):
    assert main(["data", "fetch", *TABULAR, "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sums = upstream_sha256()
    for name in TABULAR:
        for spec in SOURCES[name].files:
            assert sha256(tmp_path / spec.path) == sums[spec.path]  # the upstream bytes, independently hashed
            assert f"{spec.path} fetched and verified" in out
    assert main(["data", "check", *TABULAR, "--data-root", str(tmp_path)]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["present"] * 3

    hits = dict(mirror.hits)
    assert main(["data", "fetch", *TABULAR, "--data-root", str(tmp_path)]) == 0
    assert mirror.hits == hits and capsys.readouterr().out == ""  # everything verified, nothing fetched

    from fairsqueeze.datasets.base import build_task

    task = build_task("german", tmp_path)  # the loader reads the fetched layout
    assert len(task.train) + len(task.val) + len(task.test) == 1000


@needs_upstream
def test_an_interrupted_download_leaves_no_file_and_a_rerun_completes_it(mirror, tmp_path, capsys):
    mirror.interrupt.add("adult/adult.test")
    assert main(["data", "fetch", "adult", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().err
    assert "adult: cannot download adult.test" in out and "connection dropped mid-transfer" in out
    assert (tmp_path / "adult/adult.data").exists()  # what finished before stays
    assert not (tmp_path / "adult/adult.test").exists() and leftovers(tmp_path) == []
    assert check(SOURCES["adult"], tmp_path).state == "missing"

    assert main(["data", "fetch", "adult", "--data-root", str(tmp_path)]) == 0
    assert mirror.hits["adult/adult.data"] == 1 and mirror.hits["adult/adult.test"] == 2  # only the rest
    assert sha256(tmp_path / "adult/adult.test") == upstream_sha256()["adult/adult.test"]


@needs_upstream
def test_a_corrupt_download_is_one_line_with_both_hashes_and_is_not_kept(mirror, tmp_path, capsys):
    path = "compas/compas-scores-two-years.csv"
    bad = (UPSTREAM / path).read_bytes().replace(b"African-American", b"African-Americam", 1)
    mirror.files[path] = bad
    assert main(["data", "fetch", "compas", "--data-root", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    expected, actual = upstream_sha256()[path], hashlib.sha256(bad).hexdigest()
    assert line == f"compas: {tmp_path / path}: checksum mismatch: expected sha256 {expected}, got {actual}"
    assert not (tmp_path / path).exists() and leftovers(tmp_path) == []


@needs_upstream
def test_a_corrupt_local_file_is_reported_and_fetch_replaces_it(mirror, tmp_path, capsys):
    path = tmp_path / "german/german.data"
    path.parent.mkdir()
    path.write_bytes((UPSTREAM / "german/german.data").read_bytes().replace(b"A11", b"A12", 1))
    status = check(SOURCES["german"], tmp_path)
    assert status.state == "corrupt"
    assert f"expected sha256 {upstream_sha256()['german/german.data']}, got {sha256(path)}" in status.detail
    assert main(["data", "check", "german", "--data-root", str(tmp_path)]) == 1

    assert main(["data", "fetch", "german", "--data-root", str(tmp_path)]) == 0
    assert "checksum mismatch" in capsys.readouterr().err
    assert sha256(path) == upstream_sha256()["german/german.data"]
    assert check(SOURCES["german"], tmp_path).state == "present"


def test_missing_data_says_how_to_get_each_dataset(tmp_path, monkeypatch, capsys):
    server = Mirror()  # serves nothing: every file is a 404
    monkeypatch.setenv("FAIRSQUEEZE_DATA_MIRROR", server.url)
    try:
        assert main(["data", "check", "--data-root", str(tmp_path)]) == 0  # nothing corrupt, nothing asked for
        lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
        assert set(lines) == set(SOURCES) and all(line.split()[1] == "missing" for line in lines.values())
        assert "fairsqueeze data fetch german" in lines["german"]
        assert "manual download" in lines["celeba"] and f"{tmp_path}/celeba/" in lines["celeba"]
        assert f"{tmp_path}/utkface/UTKFace/" in lines["utkface"]
        assert main(["data", "check", "celeba", "--data-root", str(tmp_path)]) == 1
        capsys.readouterr()

        assert main(["data", "fetch", "german", "celeba", "--data-root", str(tmp_path)]) == 1
        out = capsys.readouterr().err.splitlines()
        assert len(out) == 2 and "german: cannot download german.data" in out[0] and "HTTP 404" in out[0]
        assert out[1].startswith("celeba: not fetched, CelebA's licence asks for a manual download")
        assert list(tmp_path.iterdir()) == []  # not even an empty folder
    finally:
        server.close()
    assert main(["data", "fetch", "nope"]) == 2
    assert capsys.readouterr().err.strip() == ("fairsqueeze: error: unknown dataset 'nope' "
                                               "(known: adult, compas, german, fitzpatrick, celeba, utkface)")


def image_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 20, 100, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fitzpatrick_fetches_the_listed_images_and_lists_dead_links(tmp_path, monkeypatch):
    server = Mirror()
    monkeypatch.setenv("FAIRSQUEEZE_DATA_MIRROR", server.url)
    images = {f"img/{i}.jpg": image_bytes(i) for i in range(5)}
    server.files.update(images)
    server.files["img/page.jpg"] = b"<html>moved</html>"  # served, but not an image
    server.flaky.add("img/4.jpg")  # a 503 first: fetched on the retry
    rows = [(hashlib.md5(body).hexdigest() if i < 3 else f"{i:032x}", f"{server.url}/{path}")
            for i, (path, body) in enumerate(images.items())]  # two md5hash values are not of the content
    dead = [("d" * 32, f"{server.url}/img/gone.jpg"), ("e" * 32, f"http://127.0.0.1:{closed_port()}/x.jpg"),
            ("f" * 32, f"{server.url}/img/page.jpg"), ("a" * 32, "")]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["md5hash", "fitzpatrick_scale", "label", "url"])
    writer.writerows([h, 1 + i % 6, "psoriasis", url] for i, (h, url) in enumerate(rows + dead))
    server.files["fitzpatrick17k/fitzpatrick17k.csv"] = table.getvalue().encode()
    spec = SOURCES["fitzpatrick"]
    source = dataclasses.replace(spec, files=(dataclasses.replace(spec.files[0], rows=len(rows) + len(dead)),))
    said = []
    try:
        assert fetch(source, tmp_path, said.append)
        folder = tmp_path / "fitzpatrick17k/images"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{h}.jpg" for h, _ in rows)
        for (h, _), body in zip(rows, images.values()):
            assert (folder / f"{h}.jpg").read_bytes() == body
        assert said[-1].startswith("fitzpatrick: 9 images listed: 0 already present, 5 fetched "
                                   "(3 of them with an md5 of content equal to their md5hash), 4 unreachable")
        with open(tmp_path / "fitzpatrick17k/unreachable.csv") as fh:
            listed = {r["md5hash"]: r["reason"] for r in csv.DictReader(fh)}
        assert listed == {"d" * 32: "HTTP 404", "e" * 32: "cannot connect (no network?)",
                          "f" * 32: "not a decodable image (UnidentifiedImageError)", "a" * 32: "no url"}
        assert server.hits["img/4.jpg"] == 2 and server.hits["img/gone.jpg"] == 1  # 503 retried, 404 not
        status = check(source, tmp_path)
        assert status.state == "present" and "5 of 9 listed images present" in status.detail
        assert leftovers(tmp_path) == []

        server.files["img/gone.jpg"] = image_bytes(9)  # came back online
        before = dict(server.hits)
        said.clear()
        assert fetch(source, tmp_path, said.append)
        assert all(server.hits[p] == before[p] for p in images)  # a rerun fetches only what is missing
        assert server.hits["img/gone.jpg"] == 2 and (folder / f"{'d' * 32}.jpg").exists()
        assert "5 already present, 1 fetched" in said[-1] and "3 unreachable" in said[-1]

        (tmp_path / "fitzpatrick17k/data").mkdir()  # the upstream script's folder, which the loader also reads
        folder.rename(tmp_path / "fitzpatrick17k/data/finalfitz17k")
        assert "6 of 9 listed images present" in check(source, tmp_path).detail
    finally:
        server.close()


@needs_upstream
def test_an_optional_file_that_cannot_be_fetched_does_not_fail_the_dataset(mirror, tmp_path, capsys):
    mirror.gone.add("adult/adult.names")
    assert main(["data", "fetch", "adult", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().err
    assert "adult: cannot download adult.names" in out and "HTTP 404; optional, the loader does not read it" in out
    assert check(SOURCES["adult"], tmp_path).state == "present"
    mirror.gone.add("adult/adult.test")
    (tmp_path / "adult/adult.test").unlink()
    assert main(["data", "fetch", "adult", "--data-root", str(tmp_path)]) == 1  # a file the loader reads
