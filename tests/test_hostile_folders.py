"""Hostile probe and training folders: FIFOs, sockets, symlink loops, links out of the folder,
outputs planted inside the data. Each scan runs under an alarm, so a hang fails the test."""

from __future__ import annotations

import os
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import write_image_folder
from typer.testing import CliRunner

from ftdyn.cli import app
from ftdyn.data import resolve_splits, scan_image_folder
from ftdyn.folders import ignored_message

PER_CLASS = 4


@contextmanager
def deadline(seconds: int = 60):
    def hang(signum, frame):
        raise TimeoutError(f"hang: no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "val", PER_CLASS)


def _scan(root: Path):
    with deadline():
        return scan_image_folder(root, flag="--data")


def test_fifo_named_like_an_image_is_never_opened(folder):
    os.mkfifo(folder / "circle" / "zz.png")  # opening it for reading would wait forever
    data = _scan(folder)
    assert len(data) == 3 * PER_CLASS
    assert [(p.name, why) for p, why in data.ignored] == [
        ("zz.png", "not a regular file (FIFO, device or socket)")
    ]
    assert "ignored 1 entry" in ignored_message(data.ignored)


def test_socket_is_never_opened(folder):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "square" / "s.png"))
        data = _scan(folder)
    finally:
        sock.close()
    assert len(data) == 3 * PER_CLASS and len(data.ignored) == 1


def test_symlink_loops_do_not_multiply_images(folder):
    # the data folder: would pull in every class, forever
    (folder / "circle" / "loop").symlink_to("..")
    (folder / "square" / "self").symlink_to(".")  # the class folder itself
    data = _scan(folder)
    assert len(data) == 3 * PER_CLASS
    assert data.class_counts() == [PER_CLASS] * 3
    assert sorted(why for _, why in data.ignored) == [
        "a symlink loop",
        "a symlink to a folder outside its class folder",
    ]


def test_class_folder_links_back_into_the_data_folder_are_no_classes(folder):
    """``zz_loopclass -> .`` filed every image a second time under a bogus class (and a link to
    another class folder would copy that class): such links are left out, each named."""
    (folder / "zz_loopclass").symlink_to(".")
    (folder / "zz_square_again").symlink_to("square")
    data = _scan(folder)
    assert data.classes == ["circle", "square", "stripes"]
    assert data.class_counts() == [PER_CLASS] * 3
    assert sorted((p.name, why) for p, why in data.ignored) == [
        ("zz_loopclass", "a symlink to the data folder or a folder above it (a loop)"),
        ("zz_square_again", "a symlink to a folder inside the data folder"),
    ]
    message = ignored_message(data.ignored)
    assert str(folder / "zz_loopclass") in message and str(folder / "zz_square_again") in message


def test_symlinks_followed_only_to_files_inside_the_folder(folder, tmp_path):
    outside = write_image_folder(tmp_path / "elsewhere", 1)
    (folder / "circle" / "out.png").symlink_to(next((outside / "circle").iterdir()))
    (folder / "circle" / "in.png").symlink_to(next((folder / "square").iterdir()))
    (folder / "circle" / "broken.png").symlink_to(tmp_path / "nothing.png")
    data = _scan(folder)
    names = {p.name for p in data.paths}
    assert "in.png" in names and "out.png" not in names and "broken.png" not in names
    assert data.class_counts() == [PER_CLASS + 1, PER_CLASS, PER_CLASS]
    assert sorted(why for _, why in data.ignored) == [
        "a broken symlink",
        "a symlink to a file outside the data folder",
    ]


def test_a_class_folder_that_is_a_link_keeps_its_images(folder, tmp_path):
    shared = write_image_folder(tmp_path / "shared", 2, classes=("extra",))
    (folder / "extra").symlink_to(shared / "extra")
    data = _scan(folder)
    assert data.classes == ["circle", "extra", "square", "stripes"]
    assert data.class_counts() == [PER_CLASS, 2, PER_CLASS, PER_CLASS] and not data.ignored


def test_training_splits_report_ignored_entries(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", PER_CLASS)
    write_image_folder(root / "val", 2)
    os.mkfifo(root / "train" / "circle" / "zz.png")
    with deadline():
        train, val = resolve_splits(root, None)
    assert len(train) == 3 * PER_CLASS and len(train.ignored) == 1 and not val.ignored


def test_train_out_inside_the_data_folder_is_refused(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", 2)
    write_image_folder(root / "val", 2)
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(root),
            "--arch",
            "resnet18",
            "--out",
            str(root / "train" / "series"),
            "--epochs",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "inside the input" in result.output
    assert not (root / "train" / "series").exists()
    assert sorted(p.name for p in (root / "train").iterdir()) == ["circle", "square", "stripes"]
