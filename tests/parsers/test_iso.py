"""Seed ISO: label, names as Linux reads them, exact contents, and the same bytes every time."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.iso import SeedEntry, build_iso, iso_digest, read_iso, volume_label, write_iso

ENTRIES = [SeedEntry("user-data", b"#cloud-config\n{}\n"), SeedEntry("meta-data", b"instance-id: x\n"),
           SeedEntry("network-config", b"version: 2\n"),
           SeedEntry("etcd-v3.5.1-linux-amd64.tar.gz", bytes(range(256)) * 40)]
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def iso_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iso") / "seed.iso"
    path.write_bytes(build_iso(ENTRIES, EPOCH))
    return path


def test_round_trip(iso_file: Path) -> None:
    """pycdlib reads back exactly the files, names and bytes that went in."""
    assert read_iso(iso_file.read_bytes()) == {e.name: e.data for e in ENTRIES}


def test_label_as_blkid_sees_it(iso_file: Path) -> None:
    """The volume label is cidata, which is what NoCloud looks for."""
    assert volume_label(iso_file.read_bytes()) == "cidata"
    if shutil.which("blkid") is None:
        pytest.skip("blkid (util-linux) is not installed")
    result = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso_file)],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "cidata"


@pytest.mark.parametrize("extension", ["-R", "-J"], ids=["rock-ridge", "joliet"])
def test_names_read_by_isoinfo(iso_file: Path, extension: str) -> None:
    """An independent reader (genisoimage's isoinfo) sees the exact names through Rock Ridge and Joliet."""
    if shutil.which("isoinfo") is None:
        pytest.skip("isoinfo is missing; make test installs genisoimage")
    listing = subprocess.run(["isoinfo", extension, "-f", "-i", str(iso_file)],
                             capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listing) == sorted(f"/{e.name}" for e in ENTRIES)
    content = subprocess.run(["isoinfo", extension, "-x", "/user-data", "-i", str(iso_file)],
                             capture_output=True, check=True).stdout
    assert content == ENTRIES[0].data


def test_linux_mounts_it(iso_file: Path, tmp_path: Path) -> None:
    """Linux's own iso9660 driver mounts the seed and sees the names."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(["mount", "-o", "loop,ro", "-t", "iso9660", str(iso_file), str(mnt)],
                            capture_output=True, text=True, check=False)
    if "unknown filesystem type" in result.stderr:
        # This host's kernel has no iso9660 driver; the VM test (make e2e) mounts it in a guest.
        pytest.skip("this kernel has no iso9660 driver")
    assert result.returncode == 0, result.stderr
    try:
        assert sorted(p.name for p in mnt.iterdir()) == sorted(e.name for e in ENTRIES)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_same_input_same_bytes_in_any_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image depends on its inputs and epoch only, not on the clock or the time zone."""
    first = build_iso(ENTRIES, EPOCH)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        assert build_iso(ENTRIES, EPOCH) == first
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert build_iso(ENTRIES, EPOCH + 1) != first
    assert time.time() > EPOCH + 10  # the clock really was somewhere else


names = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{1,3})?", fullmatch=True)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(names, st.binary(max_size=5000), min_size=1, max_size=6))
def test_any_files_round_trip(files: dict[str, bytes]) -> None:
    """Any set of files with plain names comes back exactly as it went in."""
    entries = [SeedEntry(name, data) for name, data in sorted(files.items())]
    assert read_iso(build_iso(entries, EPOCH)) == files


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(names, st.binary(max_size=300_000), min_size=1, max_size=5))
def test_written_hashed_and_built_agree(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> None:
    """The three ways to make a seed give one image: written to a file, hashed without holding it, in memory.
    (Files over 64 KiB take the by-reference path of the hash.)"""
    entries = [SeedEntry(name, data) for name, data in sorted(files.items())]
    image = build_iso(entries, EPOCH)
    path = tmp_path_factory.mktemp("iso") / "seed.iso"
    with open(path, "wb") as handle:
        write_iso(entries, EPOCH, handle)
    assert path.read_bytes() == image
    assert iso_digest(entries, EPOCH) == (hashlib.sha256(image).hexdigest(), len(image))
