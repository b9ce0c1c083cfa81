"""A model bundle is untrusted input: crafted sfm.json entries, sizes the models do not take, file modes another
user cannot read, and the staging folder a killed `sfm export` leaves behind. Real onnxruntime on the exported
test bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sfm_ros.backends import BackendError, make_backend
from sfm_ros.bundle import (
    BundleError,
    atomic_write_bytes,
    read_metadata,
    sha256_file,
    staged_bundle,
    stale_staging_folders,
)
from test.conftest import REPO


def _copy_with(bundle: Path, folder: Path, **changes: object) -> Path:
    copy = folder / "bundle"
    shutil.copytree(bundle, copy)
    metadata = json.loads((copy / "sfm.json").read_text())
    metadata.update(changes)
    (copy / "sfm.json").write_text(json.dumps(metadata))
    return copy


@pytest.mark.parametrize("where", ["parent", "absolute", "subfolder"])
def test_sfm_json_names_only_files_inside_the_bundle(small_bundle: Path, tmp_path: Path, where: str) -> None:
    copy = _copy_with(small_bundle, tmp_path)
    # A real model with its true sha256 outside the bundle: the checksum beside the name proves nothing.
    outside = {"parent": tmp_path / "evil.onnx", "absolute": tmp_path / "elsewhere" / "evil.onnx",
               "subfolder": copy / "sub" / "depth.onnx"}[where]
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(copy / "depth.onnx", outside)
    name = {"parent": "../evil.onnx", "absolute": str(outside), "subfolder": "sub/depth.onnx"}[where]
    metadata = json.loads((copy / "sfm.json").read_text())
    metadata["onnx"]["depth"].update(file=name, sha256=sha256_file(outside))
    (copy / "sfm.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"onnx\.depth\.file must be a bare file name inside the bundle"):
        make_backend(copy, "onnxruntime")


@pytest.mark.parametrize(("changes", "message"), [
    ({"height": 65536, "width": 65536}, "up to 4096, got 65536x65536"),
    ({"num_sources": 0}, "num_sources must be 1 to 16, got 0"),
    ({"height": "64"}, "height must be an integer"),
    ({"dispnet": ["alpha"]}, r"dispnet section must be a mapping, got \['alpha'\]"),
    ({"posenet": None}, "posenet section must be a mapping, got None"),
    ({"dispnet": {"input_frames": 3}}, r"dispnet.input_frames must be one of \(1, 2\), got 3"),
    ({"dispnet": {"input_frames": True}}, r"dispnet.input_frames must be one of \(1, 2\), got True"),
    ({"dispnet": {"input_frames": "2"}}, r"dispnet.input_frames must be one of \(1, 2\), got '2'"),
    ({"dispnet": {"input_frames": 2.0}}, r"dispnet.input_frames must be one of \(1, 2\), got 2.0"),
])
def test_sizes_out_of_bounds_are_refused_when_read(small_bundle: Path, tmp_path: Path, changes: dict,
                                                  message: str) -> None:
    copy = _copy_with(small_bundle, tmp_path, **changes)
    with pytest.raises(BundleError, match=message):
        read_metadata(copy)


def test_a_depth_net_the_code_cannot_build_is_a_bundle_error(small_bundle: Path, tmp_path: Path) -> None:
    """sfm.json is untrusted input: a dispnet this code cannot build (here a later release's architecture option)
    is a BundleError naming it, not a traceback."""
    pytest.importorskip("torch", reason="building the networks needs torch (absent in the run-time test venv)")
    pytest.importorskip("safetensors", reason="the weights need safetensors (absent in the run-time test venv)")
    from sfm_ros.bundle import load_networks

    copy = _copy_with(small_bundle, tmp_path, dispnet={"alpha": 10.0, "beta": 0.01, "decoder_skips": 4})
    with pytest.raises(BundleError, match=r"dispnet .* does not describe a DispNet: .*unexpected keyword argument "
                                          r"'decoder_skips'"):
        load_networks(copy)


@pytest.mark.parametrize(("changes", "names"), [
    ({"height": 72}, ["72x208 with 2 sources", "image [1, 3, 72, 208]", "image [1, 3, 64, 208]"]),
    ({"num_sources": 4}, ["64x208 with 4 sources", "sources [1, 4, 3, 64, 208]", "sources [1, 2, 3, 64, 208]"]),
])
def test_sizes_the_onnx_models_do_not_take_are_refused_naming_both(small_bundle: Path, tmp_path: Path,
                                                                  changes: dict, names: list[str]) -> None:
    copy = _copy_with(small_bundle, tmp_path, **changes)
    with pytest.raises(BackendError) as error:
        make_backend(copy, "onnxruntime")
    for name in names:
        assert name in str(error.value)


def test_bundle_files_get_the_mode_the_umask_gives(small_bundle: Path, tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.onnx", b"x")
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "b.onnx", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.onnx").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.onnx").stat().st_mode & 0o777 == 0o664
    # The exported bundle (written under this process's umask): readable by others wherever the umask allows.
    for name in ("sfm.json", "depth.safetensors", "pose.safetensors", "depth.onnx", "pose.onnx"):
        assert (small_bundle / name).stat().st_mode & 0o777 == 0o666 & ~previous, name


KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from sfm_ros.bundle import staged_bundle
with staged_bundle(sys.argv[1]) as staged:
    (Path(staged) / "half_written.onnx").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_export_leaves_a_staging_folder_the_next_one_removes(small_bundle: Path, tmp_path: Path) -> None:
    copy = _copy_with(small_bundle, tmp_path)
    before = sorted(p.name for p in copy.iterdir())
    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(copy)], cwd=REPO, capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -9, killed.stderr
    stale = stale_staging_folders(copy)
    assert len(stale) == 1 and (stale[0] / "bundle" / "half_written.onnx").is_file()
    # Another bundle's staging folder and unrelated hidden folders beside it are not ours.
    (tmp_path / ".bundle2.staged.abcd1234").mkdir()
    (tmp_path / ".bundle.staged.notours").mkdir()
    with staged_bundle(copy) as staged:
        assert stale_staging_folders(copy) == [staged.parent]  # the stale one is gone before the work starts
        # A second change of the same bundle meanwhile is refused, not interleaved.
        with pytest.raises(BundleError, match="being changed by another process"), staged_bundle(copy):
            pass
    assert stale_staging_folders(copy) == []
    assert sorted(p.name for p in copy.iterdir()) == before
    assert (tmp_path / ".bundle2.staged.abcd1234").is_dir() and (tmp_path / ".bundle.staged.notours").is_dir()
