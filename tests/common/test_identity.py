"""Which user a run writes as (brasyn.common.identity) and the edge that applies it (brasyn.commands.owner)."""

from __future__ import annotations

import logging
import os

import pytest

from brasyn.commands import owner
from brasyn.common.identity import Identity, choose_identity, folder_owner


@pytest.mark.parametrize(
    ("euid", "owner_uid", "owner_gid", "expected"),
    [
        (0, 4242, 4243, Identity(4242, 4243)),  # root start, OUT owned by someone else: become them
        (0, 0, 0, None),  # a root-owned OUT is written as root
        (0, 0, 4243, None),  # root's folder, whatever its group
        (0, None, None, None),  # a missing OUT: the run creates it, as root
        (4242, 1000, 1000, None),  # started with -u: run as given
        (4242, 4242, 4242, None),
    ],
)
def test_only_root_switches_and_only_to_a_non_root_owner(euid, owner_uid, owner_gid, expected):
    assert choose_identity(euid, owner_uid, owner_gid) == expected


def test_folder_owner_of_a_missing_folder_or_a_file_is_none(tmp_path):
    st = tmp_path.stat()
    assert folder_owner(tmp_path) == (st.st_uid, st.st_gid)
    assert folder_owner(tmp_path / "missing") == (None, None)
    (tmp_path / "file").write_text("x")
    assert folder_owner(tmp_path / "file") == (None, None)


def test_the_edge_switches_logs_once_and_points_the_caches_at_writable_places(tmp_path, monkeypatch, caplog):
    """The switch itself is replaced (the test process must stay root); what it would become is recorded."""
    taken: list[Identity] = []
    monkeypatch.setattr(owner, "become", taken.append)
    monkeypatch.setattr(owner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(owner, "folder_owner", lambda folder: (4242, 4243))
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))  # root's home, unusable after the switch
    with caplog.at_level(logging.INFO, logger=owner.__name__):
        assert owner.run_as_output_owner(tmp_path) == Identity(4242, 4243)
    assert taken == [Identity(4242, 4243)]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "running as uid 4242, gid 4243, the owner of the output folder" in line
    assert os.access(os.environ["HOME"], os.W_OK)


def test_the_edge_leaves_a_process_that_is_not_root_as_it_is(tmp_path, monkeypatch):
    taken: list[Identity] = []
    monkeypatch.setattr(owner, "become", taken.append)
    monkeypatch.setattr(owner.os, "geteuid", lambda: 4242)
    monkeypatch.setattr(owner, "folder_owner", lambda folder: (1000, 1000))
    assert owner.run_as_output_owner(tmp_path) is None and taken == []
