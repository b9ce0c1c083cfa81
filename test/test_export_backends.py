"""ONNX export and verification, the three backends, the engine cache key, the torch-free runtime."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sfm_ros.backends import BackendError, make_backend
from sfm_ros.backends.tensorrt_backend import EngineCache, EngineKey, trtexec_command
from sfm_ros.bundle import BundleError, onnx_path, read_metadata
from sfm_ros.export import OPSET, check_tensorrt_operators, onnx_operators
from test.conftest import BLOCK_TORCH, REPO


def test_export_writes_verified_onnx_with_checksums(small_bundle: Path) -> None:
    import onnx

    metadata = read_metadata(small_bundle)
    assert set(metadata.onnx) == {"depth", "pose"}
    for name in ("depth", "pose"):
        path = onnx_path(small_bundle, name)
        model = onnx.load(str(path))
        assert {o.domain: o.version for o in model.opset_import}[""] == OPSET
        assert metadata.onnx[name]["sha256"]
    assert metadata.onnx["depth"]["inputs"] == {"image": [1, 3, 64, 208]}
    assert metadata.onnx["pose"]["outputs"] == {"poses": [1, 2, 6], "mask": [1, 2, 64, 208]}
    assert metadata.onnx["depth"]["parity"]["disparity_rel"] < 1e-4
    assert check_tensorrt_operators(onnx_path(small_bundle, "depth")) == {"10": [], "8.5": []}
    assert {"Conv", "ConvTranspose", "Sigmoid"} <= onnx_operators(onnx_path(small_bundle, "depth"))
    # exported as the restructured equivalent (sfm_ros.models.inference), verified against the trained networks
    assert metadata.onnx["pose"]["graph"] == "restructured"
    assert "Split" in onnx_operators(onnx_path(small_bundle, "pose"))


def test_as_trained_export_keeps_the_original_graph(small_bundle: Path, tmp_path: Path) -> None:
    from sfm_ros.export import export_bundle

    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    report = export_bundle(folder, fp16=False, restructure=False)
    assert report["restructured"] is False and read_metadata(folder).onnx["depth"]["graph"] == "as-trained"
    assert "Split" not in onnx_operators(onnx_path(folder, "depth")) | onnx_operators(onnx_path(folder, "pose"))
    assert report["models"]["depth"]["parity"]["disparity_rel"] < 1e-4


def test_operator_check_reports_unsupported_ops(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert check_tensorrt_operators(path) == {"10": ["Det"], "8.5": ["Det"]}


def test_full_size_export_round_trip(tmp_path: Path) -> None:
    import torch

    from sfm_ros.bundle import BundleMetadata, save_networks
    from sfm_ros.export import export_bundle
    from sfm_ros.models import DispNet, PoseExpNet

    torch.manual_seed(1)
    folder = save_networks(tmp_path / "full", DispNet(), PoseExpNet(2, with_mask=True),
                           BundleMetadata(height=128, width=416))
    report = export_bundle(folder, fp16=True)
    assert set(report["models"]) == {"depth", "pose", "depth_fp16", "pose_fp16"}
    assert report["models"]["depth_fp16"]["parity"]["disparity_rel"] < 5e-3
    assert report["models"]["pose"]["parity"]["pose_abs"] < 1e-5


@pytest.mark.parametrize("backend_name", ["onnxruntime", "torch"])
def test_backends_agree_with_each_other(small_bundle: Path, backend_name: str) -> None:
    reference = make_backend(small_bundle, "torch", device="cpu", with_mask=True)
    backend = make_backend(small_bundle, backend_name, device="cpu", with_mask=True)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 64, 208), dtype=np.float32)
    sources = rng.standard_normal((1, 2, 3, 64, 208), dtype=np.float32)
    np.testing.assert_allclose(backend.infer_depth(image), reference.infer_depth(image), rtol=1e-4, atol=1e-5)
    poses, mask = backend.infer_pose(image, sources)
    ref_poses, ref_mask = reference.infer_pose(image, sources)
    np.testing.assert_allclose(poses, ref_poses, atol=1e-6)
    np.testing.assert_allclose(mask, ref_mask, atol=1e-5)
    assert poses.shape == (2, 6) and mask.shape == (2, 64, 208)


def test_auto_prefers_onnxruntime_without_tensorrt(small_bundle: Path) -> None:
    backend = make_backend(small_bundle, "auto")
    assert backend.name == "onnxruntime"
    assert "no TensorRT+GPU" in backend.description


def test_shape_and_name_mismatches_name_both_sides(small_bundle: Path) -> None:
    backend = make_backend(small_bundle, "onnxruntime")
    expected = r"'image' has shape \(1, 3, 128, 416\), the model expects \(1, 3, 64, 208\)"
    with pytest.raises(BackendError, match=expected):
        backend.infer_depth(np.zeros((1, 3, 128, 416), np.float32))
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        make_backend(small_bundle, "tflite")


def test_corrupt_or_missing_model_files(small_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(small_bundle, copy)
    (copy / "depth.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="does not match its sha256"):
        make_backend(copy, "onnxruntime")
    (copy / "pose.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        make_backend(copy, "torch")
    (copy / "sfm.json").unlink()
    with pytest.raises(BundleError, match=r"sfm\.json is missing"):
        make_backend(copy, "torch")
    with pytest.raises(BundleError, match="does not exist"):
        make_backend(tmp_path / "nowhere", "torch")


def test_bundle_metadata_mismatch_is_refused(small_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mismatch"
    shutil.copytree(small_bundle, copy)
    metadata = json.loads((copy / "sfm.json").read_text())
    metadata["num_sources"] = 4
    (copy / "sfm.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match="does not match the network"):
        make_backend(copy, "torch")


def test_a_two_frame_depth_net_exports_and_runs_on_the_frame_then_the_one_before(two_frame_bundle: Path) -> None:
    import onnx
    import torch

    from sfm_ros.bundle import load_networks

    model = onnx.load(str(onnx_path(two_frame_bundle, "depth")))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 6, 64, 208]
    depth_net = load_networks(two_frame_bundle)[0]
    rng = np.random.default_rng(1)
    frame, before = (rng.standard_normal((1, 3, 64, 208), dtype=np.float32) for _ in range(2))
    with torch.no_grad():  # the network itself on the two frames stacked, as training gives them
        expected = depth_net(torch.from_numpy(np.concatenate([frame, before], axis=1)))[0].numpy()
        swapped = depth_net(torch.from_numpy(np.concatenate([before, frame], axis=1)))[0].numpy()
    assert np.abs(expected - swapped).max() > 1e-3 * np.abs(expected).max()  # the order is seen
    for name in ("onnxruntime", "torch"):
        backend = make_backend(two_frame_bundle, name, device="cpu")
        assert backend.metadata.depth_input_frames == 2
        np.testing.assert_allclose(backend.infer_depth(np.concatenate([frame, before], axis=1)), expected,
                                   rtol=1e-4, atol=1e-5)
        with pytest.raises(BackendError, match=r"'image' has shape \(1, 3, 64, 208\), the model expects "
                                               r"\(1, 6, 64, 208\)"):
            backend.infer_depth(frame)


def test_a_depth_frame_count_the_models_do_not_take_is_refused(small_bundle: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(small_bundle, tmp_path / "stale")
    metadata = json.loads((copy / "sfm.json").read_text())
    metadata["dispnet"]["input_frames"] = 2  # a crafted or stale sfm.json over single-frame ONNX files
    (copy / "sfm.json").write_text(json.dumps(metadata))
    with pytest.raises(BackendError, match=r"2 depth frame\(s\) \(inputs image \[1, 6, 64, 208\]\), but the models "
                                           r"take image \[1, 3, 64, 208\]"):
        make_backend(copy, "onnxruntime")


def test_the_latency_benchmark_feeds_a_two_frame_depth_net_its_pair(two_frame_bundle: Path) -> None:
    from sfm_ros.bench import bench_inference

    result = bench_inference(two_frame_bundle, "onnxruntime", repeats=2, warmup=1)
    assert result["depth_ms_median"] > 0 and result["pose_ms_median"] > 0


def test_engine_cache_key_changes_with_every_field(tmp_path: Path) -> None:
    base = EngineKey("a" * 64, "10.3.0", "Orin", "8.7", "fp16", (("image", (1, 3, 128, 416)),))
    variants = [EngineKey("b" * 64, *list(vars(base).values())[1:]),
                EngineKey(base.onnx_sha256, "8.5.2", *list(vars(base).values())[2:]),
                EngineKey(base.onnx_sha256, base.tensorrt_version, "RTX 4090", *list(vars(base).values())[3:]),
                EngineKey(*list(vars(base).values())[:3], "8.9", base.precision, base.input_shapes),
                EngineKey(*list(vars(base).values())[:4], "fp32", base.input_shapes),
                EngineKey(*list(vars(base).values())[:5], (("image", (1, 3, 256, 832)),))]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 7
    cache = EngineCache(tmp_path)
    cache.store("depth", base, b"engine-bytes")
    assert cache.lookup("depth", base) == b"engine-bytes"
    for variant in variants:
        assert cache.lookup("depth", variant) is None
    # A foreign engine copied under this key's name (sidecar of another key) is not loaded.
    cache.path_for("depth", variants[1]).write_bytes(b"foreign")
    cache.path_for("depth", variants[1]).with_suffix(".json").write_text(json.dumps(vars(base), default=list))
    assert cache.lookup("depth", variants[1]) is None


def test_trtexec_command() -> None:
    from sfm_ros.backends.tensorrt_backend import BuildPlan

    assert trtexec_command("d.onnx", "d.engine", BuildPlan("fp32", False, ("FP16",))) == (
        "trtexec --onnx=d.onnx --saveEngine=d.engine --fp16 --memPoolSize=workspace:1024")
    assert trtexec_command("d.onnx", "d.engine", BuildPlan("int8_qdq", True, ())) == (
        "trtexec --onnx=d.onnx --saveEngine=d.engine --stronglyTyped --memPoolSize=workspace:1024")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not Path("/dev/nvidiactl").exists(),
                    reason="needs TensorRT and an NVIDIA GPU (not installable on this CPU machine)")
def test_tensorrt_backend_matches_onnxruntime(small_bundle: Path, tmp_path: Path) -> None:  # pragma: no cover
    trt = make_backend(small_bundle, "tensorrt", precision="fp32", engine_cache_dir=tmp_path, with_mask=True)
    ort = make_backend(small_bundle, "onnxruntime", with_mask=True)
    image = np.random.default_rng(0).standard_normal((1, 3, 64, 208), dtype=np.float32)
    np.testing.assert_allclose(trt.infer_depth(image), ort.infer_depth(image), rtol=1e-3, atol=1e-3)
    assert any(tmp_path.glob("depth-*.engine"))


def test_runtime_imports_without_torch(small_bundle: Path) -> None:
    """The node's path (pipeline + onnxruntime + ros_io + replay) must work with `import torch` blocked."""
    script = BLOCK_TORCH + f"""
import numpy as np
from sfm_ros.odometry.pipeline import Pipeline
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.camera import CameraModel
import sfm_ros.worker, sfm_ros.replay, sfm_ros.ros_io, sfm_ros.scale, sfm_ros.backends.onnxruntime_backend
p = Pipeline(PipelineConfig(bundle={str(small_bundle)!r}, backend="auto"), ScaleConfig(source="none"))
camera = CameraModel(K=np.array([[200.0, 0, 103.5], [0, 200, 31.5], [0, 0, 1]]), height=64, width=208)
for i in range(3):
    e = p.process(i * 100_000_000, np.full((64, 208, 3), 100 + i, np.uint8), camera)
assert e.T_prev_current is not None and p.backend.name == "onnxruntime"
assert "torch" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_runtime_modules_do_not_import_torch_or_training() -> None:
    """Static check for the modules that need ROS (node, launch): no torch, no training imports."""
    import ast

    odometry = sorted(str(p.relative_to(REPO)) for p in (REPO / "sfm_ros" / "odometry").glob("*.py"))
    runtime = ["sfm_ros/node.py", *odometry, "sfm_ros/ros_io.py", "sfm_ros/scale.py", "sfm_ros/replay.py",
               "sfm_ros/worker.py", "sfm_ros/backends/__init__.py", "sfm_ros/backends/onnxruntime_backend.py",
               "sfm_ros/backends/tensorrt_backend.py", "sfm_ros/calibration.py", "sfm_ros/quantize.py",
               "launch/sfm.launch.py"]
    for path in runtime:
        tree = ast.parse((REPO / path).read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in modules if m.split(".")[0] in ("torch", "training")}, path
    # Nothing in sfm_ros imports training except the CLI, the composition root.
    for path in (REPO / "sfm_ros").rglob("*.py"):
        if path.name == "cli.py":
            continue
        assert "from training" not in path.read_text() and "import training" not in path.read_text(), path


def test_runtime_preprocessing_matches_training() -> None:
    """The robot's preprocess (numpy) feeds the networks what training's normalise (torch) fed them."""
    import torch

    from sfm_ros.backends import preprocess
    from sfm_ros.bundle import BundleMetadata
    from training.normalisation import normalise

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 208, 3), dtype=np.uint8)
    trained = normalise(torch.from_numpy(rgb).permute(2, 0, 1)[None]).numpy()
    found = preprocess(rgb, BundleMetadata(height=64, width=208))  # the bundle's default normalisation
    assert found.shape == (1, 3, 64, 208) and found.dtype == np.float32 and found.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(found, trained, atol=1e-6)
    # per-channel statistics land on their own channel
    metadata = BundleMetadata(height=64, width=208, mean=[0.1, 0.5, 0.9], std=[0.2, 0.4, 0.8])
    expected = (rgb.astype(np.float64) / 255 - metadata.mean) / metadata.std
    np.testing.assert_allclose(preprocess(rgb, metadata)[0], expected.transpose(2, 0, 1), atol=1e-5)
