"""Bad input gets one clear line, a non-zero exit and nothing written; broken plugins are named
and skipped."""
import logging
import shutil

import pytest

from fairsqueeze.cli import main
from fairsqueeze.methods import METHODS


def suite_file(tmp_path, task: str, options: str = "{size: 32}") -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"seeds: [0]\ntrain: {{epochs: 1}}\ntasks: [{{name: {task}, options: {options}}}]\n"
                    "models: [vgg11_narrow]\nmethods: [dense]\n")
    return str(path)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", *args, "--quiet"])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("task, folder, message", [
    ("utkface", "utkface/UTKFace", "no UTKFace images"),
    ("celeba", "celeba/img_align_celeba", "none of the 2 images listed in list_attr_celeba.txt is in"),
])
def test_an_empty_image_folder_is_one_line(isolated, capsys, task, folder, message):
    root = isolated / "data"
    (root / folder).mkdir(parents=True)
    if task == "celeba":
        names = " ".join(f"A{i}" for i in range(40))
        rows = "\n".join(f"{i:06d}.jpg " + " ".join(["1", "-1"] * 20) for i in (1, 2))
        (root / "celeba/list_attr_celeba.txt").write_text(f"2\n{names}\n{rows}\n")
        (root / "celeba/list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n")
    db = isolated / "x.db"
    code, err = run_cli(capsys, suite_file(isolated, task, "{size: 32, target: A0, sensitive: A1}" if task == "celeba"
                                            else "{size: 32}"), "--data-root", str(root), "--db", f"sqlite:///{db}")
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not db.exists()


def test_a_database_path_that_is_a_folder_or_unwritable_is_one_line(isolated, capsys):
    suite = suite_file(isolated, "digits", "{size: 32, channels: 3}")
    folder = isolated / "adir"
    folder.mkdir()
    code, err = run_cli(capsys, suite, "--db", f"sqlite:///{folder}")
    assert code == 2 and err.count("\n") == 0 and f"{folder} is a directory" in err
    blocker = isolated / "file"
    blocker.write_text("")
    code, err = run_cli(capsys, suite, "--db", f"sqlite:///{blocker}/sub/x.db")
    assert code == 2 and err.count("\n") == 0 and "cannot create the database" in err and str(blocker) in err


def test_a_missing_file_or_a_root_one_level_too_deep_writes_no_database(isolated, capsys, tmp_path):
    db = isolated / "x.db"
    code, err = run_cli(capsys, suite_file(isolated, "adult", "{}"), "--data-root", str(tmp_path / "nowhere"),
                        "--db", f"sqlite:///{db}")
    assert code == 2 and "adult" in err and not db.exists()


def test_a_plugin_that_fails_to_import_is_named_and_the_builtins_still_work(tmp_path, monkeypatch, caplog):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fairsqueeze.methods]\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    with caplog.at_level(logging.WARNING, logger="fairsqueeze"):
        names = METHODS.names()
    assert "dense" in names and "truncated_svd" in names
    (record,) = [r for r in caplog.records if "broken" in r.getMessage()]
    assert "'broken' (broken_plugin) failed to import" in record.getMessage()
    assert "needs a library that is not installed" in record.getMessage()
