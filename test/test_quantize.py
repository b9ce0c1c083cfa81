"""onnxruntime INT8: calibration windows from a real bag, the held-out check, the backend, failures that keep
the bundle as it was, and quantisation and inference with torch blocked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from sfm_ros.backends import BackendError, make_backend
from sfm_ros.bundle import BundleError, onnx_path, read_metadata
from sfm_ros.calibration import calibration_windows
from sfm_ros.export import onnx_operators
from sfm_ros.polyphase import polyphase_transposed_convs
from sfm_ros.quantize import INT8_TOLERANCES, QuantizeError, quantize_bundle
from test.conftest import BLOCK_TORCH, REPO


@pytest.fixture(scope="module")
def int8_bundle(small_bundle: Path, odometry_bag: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = shutil.copytree(small_bundle, tmp_path_factory.mktemp("int8") / "bundle")
    quantize_bundle(folder, odometry_bag, max_windows=16)
    return folder


def test_calibration_windows_are_consecutive_real_frames(small_bundle: Path, odometry_bag: Path) -> None:
    windows = list(calibration_windows(odometry_bag, read_metadata(small_bundle), max_windows=4))
    assert len(windows) == 4
    first, second = windows[0], windows[1]
    assert first["image"].shape == (1, 3, 64, 208) and first["sources"].shape == (1, 2, 3, 64, 208)
    assert first["image"] is first["target"]
    # window k = frames k..k+2 with the middle one as target: the next window's first source is this target
    np.testing.assert_array_equal(second["sources"][0, 0], first["target"][0])
    assert first["image"].std() > 0.1  # real, normalised images, not blank frames


def test_a_two_frame_depth_net_is_calibrated_and_quantised_on_the_target_and_the_frame_before(
        two_frame_bundle: Path, odometry_bag: Path, tmp_path: Path) -> None:
    metadata = read_metadata(two_frame_bundle)
    windows = list(calibration_windows(odometry_bag, metadata, max_windows=2))
    for window in windows:  # the 3-frame window's first source is the frame before its target
        assert window["image"].shape == (1, 6, 64, 208)
        np.testing.assert_array_equal(window["image"][:, :3], window["target"])
        np.testing.assert_array_equal(window["image"][0, 3:], window["sources"][0, 0])
    folder = shutil.copytree(two_frame_bundle, tmp_path / "bundle")
    report = quantize_bundle(folder, odometry_bag, max_windows=8, targets=("onnxruntime", "tensorrt"))
    for key in ("depth_int8", "depth_int8_qdq"):  # onnxruntime's and TensorRT's INT8, each checked on held-out pairs
        assert report["models"][key]["check"]["disparity_rel_median"] <= INT8_TOLERANCES["disparity_rel_median"]
        assert report["models"][key]["inputs"]["image"] == [1, 6, 64, 208]
    int8 = make_backend(folder, "onnxruntime", precision="int8")
    assert int8.infer_depth(windows[1]["image"]).shape == (1, 1, 64, 208)


def test_int8_models_are_checked_recorded_and_run(int8_bundle: Path, odometry_bag: Path) -> None:
    metadata = read_metadata(int8_bundle)
    for model, key in (("depth", "disparity_rel_median"), ("pose", "pose_rel_median")):
        entry = metadata.onnx[f"{model}_int8"]
        assert entry["check"][key] <= INT8_TOLERANCES[key]
        assert entry["inputs"] == metadata.onnx[model]["inputs"]
        operators = onnx_operators(onnx_path(int8_bundle, model, "int8"))  # verifies the sha256 too
        assert "QLinearConv" in operators
        assert "ConvTranspose" not in operators  # they became INT8 convolutions (sfm_ros.polyphase)
    # DispNet's 7 upconvs and the 5 of PoseExpNet's mask decoder (this bundle exports the mask)
    assert metadata.onnx["depth_int8"]["polyphase_layers"] == 7 and metadata.onnx["pose_int8"]["polyphase_layers"] == 5
    fp32 = make_backend(int8_bundle, "onnxruntime", precision="fp32", with_mask=True)
    int8 = make_backend(int8_bundle, "onnxruntime", precision="int8", with_mask=True)
    assert "int8" in int8.description and int8.has_mask
    image = list(calibration_windows(odometry_bag, metadata, max_windows=24))[-1]["image"]  # past the 16 used
    reference, quantized = fp32.infer_depth(image), int8.infer_depth(image)
    assert quantized.shape == reference.shape and not np.array_equal(quantized, reference)  # really a second model
    assert np.median(np.abs(quantized - reference) / reference) < 0.10


def test_int8_tolerance_miss_leaves_the_bundle_unchanged(small_bundle: Path, odometry_bag: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    before = (folder / "sfm.json").read_text()
    monkeypatch.setitem(INT8_TOLERANCES, "disparity_rel_median", 0.0)
    with pytest.raises(QuantizeError, match=r"depth: INT8 \(onnxruntime\) differs from fp32 by .* tolerance 0%"):
        quantize_bundle(folder, odometry_bag, max_windows=6)
    assert (folder / "sfm.json").read_text() == before
    assert not list(folder.glob("*int8*"))


def test_a_rewrite_that_changes_the_function_is_refused(small_bundle: Path, odometry_bag: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sfm_ros.quantize

    def broken_rewrite(model) -> int:  # a sign slip in the (odd, odd) kernels: the check must see it
        count = polyphase_transposed_convs(model)
        for weight in model.graph.initializer:
            if weight.name.endswith("phase3_weight"):
                weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
        return count

    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    before = (folder / "sfm.json").read_text()
    monkeypatch.setattr(sfm_ros.quantize, "polyphase_transposed_convs", broken_rewrite)
    with pytest.raises(QuantizeError, match=r"depth: the polyphase rewrite changed the fp32 outputs"):
        quantize_bundle(folder, odometry_bag, max_windows=4)
    assert (folder / "sfm.json").read_text() == before and not list(folder.glob("*int8*"))


def test_keeping_transposed_convs_quantises_the_rest(small_bundle: Path, odometry_bag: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    report = quantize_bundle(folder, odometry_bag, max_windows=16, polyphase=False)
    assert report["models"]["depth_int8"]["polyphase_layers"] == 0
    operators = onnx_operators(onnx_path(folder, "depth", "int8"))
    assert {"ConvTranspose", "QLinearConv"} <= operators


def test_int8_needs_enough_frames_and_a_known_method(small_bundle: Path, odometry_bag: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    with pytest.raises(QuantizeError, match="gave 1 frame windows of 3"):
        quantize_bundle(folder, odometry_bag, max_windows=1)
    with pytest.raises(QuantizeError, match="calibration method 'best' unknown"):
        quantize_bundle(folder, odometry_bag, method="best")


def test_int8_errors_name_what_to_do(small_bundle: Path, int8_bundle: Path) -> None:
    with pytest.raises(BundleError, match="--precision int8 --int8-bag BAG"):
        make_backend(small_bundle, "onnxruntime", precision="int8")
    with pytest.raises(BackendError, match="CPU provider"):
        make_backend(int8_bundle, "onnxruntime", device="cuda", precision="int8")
    with pytest.raises(BackendError, match="int8 is onnxruntime on a CPU"):
        make_backend(int8_bundle, "torch", precision="int8")


def test_reexport_drops_stale_int8_models(int8_bundle: Path, tmp_path: Path) -> None:
    from sfm_ros.export import export_bundle

    folder = shutil.copytree(int8_bundle, tmp_path / "bundle")
    export_bundle(folder, fp16=False, with_mask=True)
    assert "depth_int8" not in read_metadata(folder).onnx  # built from the old fp32 model: not listed any more


def test_cli_int8_export_needs_a_bag(small_bundle: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    result = subprocess.run([sys.executable, "-m", "sfm_ros.cli", "export", str(folder), "--no-fp16", "--precision",
                             "int8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "--precision int8 needs --int8-bag BAG" in result.stderr


def test_int8_quantisation_and_pipeline_without_torch(small_bundle: Path, odometry_bag: Path, tmp_path: Path) -> None:
    """On the robot: `sfm quantize` with the robot's own bag, then the node's pipeline on INT8, torch blocked."""
    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    script = BLOCK_TORCH + f"""
import numpy as np
from sfm_ros.cli import main
from sfm_ros.odometry.pipeline import Pipeline
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.camera import CameraModel
assert main(["quantize", {str(folder)!r}, {str(odometry_bag)!r}, "--windows", "16"]) == 0
config = PipelineConfig(bundle={str(folder)!r}, backend="onnxruntime", precision="int8")
p = Pipeline(config, ScaleConfig(source="none"))
camera = CameraModel(K=np.array([[200.0, 0, 103.5], [0, 200, 31.5], [0, 0, 1]]), height=64, width=208)
for i in range(3):
    e = p.process(i * 100_000_000, np.full((64, 208, 3), 100 + i, np.uint8), camera)
assert e.T_prev_current is not None and "int8" in p.backend.description
assert "torch" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(json.loads(result.stdout)["models"]) == ["depth_int8", "pose_int8"]  # `sfm quantize` prints it


def test_a_failed_int8_export_leaves_the_bundle_as_it_was(small_bundle: Path, odometry_bag: Path,
                                                          tmp_path: Path) -> None:
    """`sfm export --precision int8` re-exports first: when the INT8 step fails, that export must not stay."""
    import hashlib

    from sfm_ros.cli import main

    folder = shutil.copytree(small_bundle, tmp_path / "bundle")  # exported with the mask output
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    # The re-export (without --mask: a different pose.onnx) succeeds, then quantisation refuses one frame window
    # (it needs calibration and held-out windows).
    code = main(["export", str(folder), "--no-fp16", "--precision", "int8", "--int8-bag", str(odometry_bag),
                 "--int8-windows", "1"])
    assert code == 2
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert after == before
    # No staged copy left behind; the export's lock file stays beside the bundle (sfm_ros.bundle.staged_bundle).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.lock", "bundle"]
    assert main(["export", str(folder), "--no-fp16", "--mask"]) == 0
    assert "depth" in read_metadata(folder).onnx
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.lock", "bundle"]


def test_tensorrt_int8_is_explicit_quantization_with_its_own_ranges(small_bundle: Path, odometry_bag: Path,
                                                                    tmp_path: Path) -> None:
    """The Q/DQ models TensorRT builds INT8 engines from: symmetric int8 (zero points 0, as TensorRT requires),
    per-channel weights, every operator in the parser's lists, within tolerance of fp32 under onnxruntime, and each
    model's own calibration in its file (so in the engine key)."""
    import onnx
    from onnx import numpy_helper

    from sfm_ros.export import check_tensorrt_operators

    folder = shutil.copytree(small_bundle, tmp_path / "bundle")
    report = quantize_bundle(folder, odometry_bag, max_windows=16, targets=("tensorrt",))
    metadata = read_metadata(folder)
    assert set(report["models"]) == {"depth_int8_qdq", "pose_int8_qdq"} and "depth_int8" not in metadata.onnx
    scales = {}
    for model in ("depth", "pose"):
        path = onnx_path(folder, model, "int8_qdq")
        graph = onnx.load(str(path)).graph
        operators = {node.op_type for node in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators and "QLinearConv" not in operators
        assert check_tensorrt_operators(path) == {"10": [], "8.5": []}
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        zero_points = [v for k, v in initializers.items() if k.endswith("zero_point") and v.dtype == np.int8]
        assert zero_points and all(not z.any() for z in zero_points)
        per_channel = [v for k, v in initializers.items() if k.endswith("_scale") and v.ndim == 1 and v.size > 1]
        assert per_channel  # weights quantised per output channel
        scales[model] = sorted(float(v.ravel()[0]) for k, v in initializers.items() if k.endswith("_scale"))
        assert metadata.onnx[f"{model}_int8_qdq"]["check"]  # checked against fp32 on held-out windows
    assert scales["depth"] != scales["pose"]  # per-model calibration, never one table for both


def test_qdq_models_are_checked_with_32_bit_accumulation(tmp_path: Path) -> None:
    """The TensorRT models' check computes the Q/DQ file's arithmetic, not onnxruntime's fused int8 convolution,
    whose AVX2 kernel (x86 without VNNI, as on this project's machines) sums pairs of products in saturating 16-bit
    registers. A 1x1 convolution of 16 int8 inputs of 127 with weights of 127, the largest symmetric int8 values:
    exactly 16 * 127 * 127 = 258064, requantised at a scale of 2048 to round(126.01) * 2048 = 258048. The
    saturating kernel gives 2048 here (it shifts inputs to 255 and clips each pair sum, 2 * 255 * 127, to 32767).
    On a CPU with VNNI the fused kernel is exact too, so there this test cannot tell the two apart."""
    import onnx
    from onnx import TensorProto, helper

    import sfm_ros.quantize

    channels, output_scale = 16, 2048.0
    initializers = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                    numpy_helper.from_array(np.array(0, np.int8), "zero"),
                    numpy_helper.from_array(np.full((1, channels, 1, 1), 127, np.int8), "weight_q"),
                    numpy_helper.from_array(np.array([1.0], np.float32), "weight_scale"),
                    numpy_helper.from_array(np.array([0], np.int8), "weight_zero"),
                    numpy_helper.from_array(np.array(output_scale, np.float32), "output_scale")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "one", "zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["weight_q", "weight_scale", "weight_zero"], ["weight"], axis=0),
             helper.make_node("Conv", ["x_dq", "weight"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "output_scale", "zero"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "output_scale", "zero"], ["out"])]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [1, channels, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4])], initializers)
    path = tmp_path / "qdq_conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    session = sfm_ros.quantize.qdq_reference_session(path)
    found = session.run(None, {"x": np.full((1, channels, 4, 4), 127.0, np.float32)})[0]
    np.testing.assert_array_equal(found, np.full((1, 1, 4, 4), 126 * output_scale, np.float32))


def test_tensorrt_build_plans_by_version() -> None:
    from sfm_ros.backends.tensorrt_backend import BuildPlan, build_plan

    trt10 = ({"FP16", "INT8", "TF32", "BF16"}, {"EXPLICIT_BATCH", "STRONGLY_TYPED"})  # 8.5-10.x: weakly typed flags
    trt11 = ({"TF32", "DIRECT_IO"}, {"STRONGLY_TYPED"})  # 11: precision comes from the graph
    assert build_plan("fp16", *trt10) == BuildPlan("fp32", False, ("FP16",))
    assert build_plan("int8", *trt10) == BuildPlan("int8_qdq", False, ("INT8", "FP16"))
    assert build_plan("fp16", *trt11) == BuildPlan("fp16", True, ())
    assert build_plan("int8", *trt11) == BuildPlan("int8_qdq", True, ())
    assert build_plan("fp32", *trt11) == BuildPlan("fp32", True, ())
    with pytest.raises(BackendError, match="neither the FP16 builder flag nor strongly-typed"):
        build_plan("fp16", {"TF32"}, {"EXPLICIT_BATCH"})
