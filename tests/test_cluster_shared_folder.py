"""The shared data-folder markers (gatewayd.cluster.shared_folder) on a real folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.cluster.shared_folder import (
    NotShared,
    check_markers,
    marker_path,
    new_token,
    outside,
    remove_marker,
    write_marker,
)
from gatewayd.names import check_name


def test_markers_written_read_and_taken_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    a, b = new_token(), new_token()
    assert a != b and len(a) == 32
    path = write_marker(data, "gw-a", a)
    assert path == marker_path(data, "gw-a") and path.read_text() == f"{a}\n"
    assert [p.name for p in path.parent.iterdir()] == ["gw-a"], "no temporary file left"
    write_marker(data, "gw-a", b)  # a restart replaces its marker
    check_markers(data, "gw-b", [("gw-a", b)])
    with pytest.raises(NotShared, match="holds another token than the one node gw-a wrote"):
        check_markers(data, "gw-b", [("gw-a", a)])
    with pytest.raises(NotShared, match="node gw-b does not see the data folder of node gw-c"):
        check_markers(data, "gw-b", [("gw-a", b), ("gw-c", a)])
    remove_marker(data, "gw-a", a)
    assert path.exists(), "another token: not ours to remove"
    remove_marker(data, "gw-a", b)
    assert not path.exists()


def test_rule_folders_outside_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folders = {"in": data / "in", "x": tmp_path / "x", "deep": data / "a" / "b"}
    assert outside(data, folders) == {"x": tmp_path / "x"}


def test_the_markers_folder_is_no_rule_nor_file_name() -> None:
    assert (
        check_name(".gatewayd-nodes") == "'.gatewayd-nodes' is reserved for the gateway's own use"
    )
