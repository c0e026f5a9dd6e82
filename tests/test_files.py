"""Input and output file rules: same-file detection, stale temporary files, the output lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from latentdub.toolkit.core.errors import BadInputError, OutputError
from latentdub.toolkit.core.files import check_input_file, check_not_an_input, claim_outputs, file_lock, same_file, stale_temps, temp_beside, write_text_atomic


def test_same_file_sees_through_symlinks_hard_links_and_dots(tmp_path):
    a = tmp_path / "a.mp4"
    a.write_bytes(b"x")
    (tmp_path / "sym.mp4").symlink_to(a)
    os.link(a, tmp_path / "hard.mp4")
    (tmp_path / "sub").mkdir()
    for other in ("sym.mp4", "hard.mp4", "sub/../a.mp4"):
        assert same_file(a, tmp_path / other)
    (tmp_path / "b.mp4").write_bytes(b"x")
    assert not same_file(a, tmp_path / "b.mp4") and not same_file(a, tmp_path / "new.mp4")
    with pytest.raises(OutputError, match=r"hard.mp4: is the video of this run \(.*a.mp4, through a link\)"):
        check_not_an_input(tmp_path / "hard.mp4", {"speech": None, "video": a})


def test_stale_temps_belong_to_one_output_only(tmp_path):
    mine = temp_beside(tmp_path / "a.mp4")
    other = temp_beside(tmp_path / "a.b.mp4")  # an output whose name starts like ours
    mask = os.umask(0)
    os.umask(mask)
    assert mine.name.startswith(".a.mp4.") and mine.name.endswith(".part.mp4") and mine.stat().st_mode & 0o777 == 0o666 & ~mask
    assert stale_temps(tmp_path / "a.mp4") == [mine] and stale_temps(tmp_path / "a.b.mp4") == [other]


def test_claim_refuses_existing_files_and_a_second_holder_and_cleans_up(tmp_path):
    out, sidecar = tmp_path / "o.mp4", tmp_path / "o.latentdub.yaml"
    stale = temp_beside(out)
    sidecar.write_text("old")
    with pytest.raises(OutputError, match="o.latentdub.yaml: already exists; pass --overwrite"):
        with claim_outputs([out, sidecar], {}, overwrite=False):
            pass
    with claim_outputs([out, sidecar], {}, overwrite=True):
        assert not stale.exists() and (tmp_path / ".o.mp4.lock").exists()
        with pytest.raises(OutputError, match="another latentdub run is writing it now"):
            with claim_outputs([out], {}, overwrite=True):
                pass
        write_text_atomic(sidecar, "new")
    assert sidecar.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["o.latentdub.yaml"]
    with file_lock(out, wait=False):  # free again
        pass


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "file not found"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
])
def test_input_files_must_be_readable_files_with_content(tmp_path, setup, message):
    path = tmp_path / "clip.mp4"
    setup(path)
    with pytest.raises(BadInputError, match=message):
        check_input_file(path, "video")


def test_a_row_file_keeps_rows_apart_and_out_of_the_process_memory(tmp_path):
    """Rows written in any order read back exactly; reading them all leaves the resident memory where it was (a memmap's
    touched pages would count in it)."""
    import numpy as np

    from latentdub.toolkit.core.files import RowFile

    def resident_mib() -> float:  # now, not the peak (Linux)
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    shape = (256, 256, 3)  # 192 KiB a row, 128 MiB in all
    rows = RowFile(tmp_path / "rows.u8", 680, shape)
    assert len(rows) == 680
    before = resident_mib()
    for i in list(range(0, 680, 2)) + list(range(1, 680, 2)):
        rows[i] = np.full(shape, i % 251, np.uint8)
    assert all(int(rows[i][7, 9, 1]) == i % 251 and rows[i].shape == shape for i in range(680))
    assert resident_mib() - before < 32, resident_mib() - before
    with pytest.raises(ValueError, match="row must be"):
        rows[0] = np.zeros((2, 2), np.uint8)
    with pytest.raises(IndexError):
        rows[680]
    rows.close()
