"""Typed configuration: YAML presets, overrides, validation, and config/sfm.yaml in sync with NodeConfig."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from sfm_ros.config import (
    ConfigError,
    NodeConfig,
    ScaleConfig,
    load_config,
    nest,
    parameter_table,
    render_parameter_file,
    to_dict,
)
from test.conftest import REPO
from training.config import TrainConfig, load_train_config


def test_train_presets_load_and_the_kitti_one_is_the_default_recipe() -> None:
    kitti = load_train_config(str(REPO / "config" / "train_kitti.yaml"))
    assert (kitti.data.height, kitti.data.width, kitti.data.sequence_length) == (128, 416, 3)
    assert (kitti.optim.batch_size, kitti.optim.lr, kitti.optim.beta1) == (4, 2e-4, 0.9)
    # The recommended recipe: the paper's but for these (the learning benchmark's ablation).
    assert (kitti.loss.smooth_weight, kitti.loss.explain_weight, kitti.model.initial_disparity) == (0.1, 0.2, 0.3)
    assert kitti.loss.validity_mask and kitti.loss.validity_mean == "all"
    assert kitti.data.flip_depth and not kitti.data.flip
    paper = load_train_config(str(REPO / "config" / "train_paper.yaml"))
    assert dataclasses.replace(paper.loss, smooth_weight=0.1, validity_mask=True, validity_mean="all") == kitti.loss
    assert dataclasses.replace(paper.model, initial_disparity=0.3) == kitti.model
    assert dataclasses.replace(paper.optim, average_decay=0.99) == kitti.optim  # the paper takes the last weights
    assert not paper.data.flip_depth  # the paper's depth net sees every target as recorded
    # The maths equals the dataclass defaults; only loader workers and the run section (speed path, output) differ.
    defaults = TrainConfig()
    for section in ("model", "loss", "optim"):
        assert getattr(kitti, section) == getattr(defaults, section), section
    assert dataclasses.replace(kitti.data, workers=defaults.data.workers) == defaults.data
    assert kitti.run.amp and kitti.run.channels_last and kitti.run.compile and kitti.run.cuda_graph
    small = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"))
    assert (small.data.height, small.data.width) == (64, 208)
    assert small.loss == defaults.loss and small.model == defaults.model  # the demo trains the default recipe


def test_overrides_and_errors_name_the_key() -> None:
    config = load_train_config(None, ["loss.ssim_weight=0.85", "data.sources=[a, b]", "optim.max_steps=7",
                                      "optim.lr=1e-4"])
    assert config.loss.ssim_weight == 0.85 and config.data.sources == ("a", "b") and config.optim.max_steps == 7
    assert config.optim.lr == 1e-4  # YAML 1.1 would leave "1e-4" a string
    with pytest.raises(ConfigError, match="optim.lr must be a number, got 'fast'"):
        load_train_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lamda_e'\] in loss"):
        load_train_config(None, ["loss.lamda_e=0.2"])
    with pytest.raises(ConfigError, match="optim.batch_size must be an integer, got 'four'"):
        load_train_config(None, ["optim.batch_size=four"])
    with pytest.raises(ConfigError, match="multiples of 8"):
        load_train_config(None, ["data.height=100"])
    with pytest.raises(ConfigError, match="beside a two-frame one: set model.depth_input_frames=2"):
        load_train_config(None, ["model.depth_companion=true"])
    with pytest.raises(ConfigError, match=r"source must be one of \['camera_height'"):
        load_config(NodeConfig, None, ["scale.source=lidar"])
    with pytest.raises(ConfigError, match=r"camera_height_m must be in \[0.05, 10.0\]"):
        load_config(NodeConfig, None, ["scale.camera_height_m=-1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_train_config(None, ["novalue"])


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ScaleConfig().source = "none"  # type: ignore[misc]


def test_node_parameter_file_matches_the_dataclass_defaults() -> None:
    text = (REPO / "config" / "sfm.yaml").read_text()
    assert text == render_parameter_file(), "config/sfm.yaml is stale: regenerate it (see render_parameter_file)"
    data = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert data == to_dict(NodeConfig())
    for spec in parameter_table(NodeConfig):
        assert spec.description and f"# {spec.description}" in text, spec.name


def test_parameter_table_round_trips_through_ros_names() -> None:
    specs = parameter_table(NodeConfig)
    names = [s.name for s in specs]
    assert "pipeline.bundle" in names and "scale.camera_height_m" in names and len(names) == len(set(names))
    flat = {s.name: s.default for s in specs}
    assert load_config(NodeConfig, None, []) == NodeConfig()
    from sfm_ros.config import from_dict

    assert from_dict(NodeConfig, nest(flat)) == NodeConfig()
    read_only = {s.name for s in specs if s.read_only}
    assert {"pipeline.bundle", "pipeline.backend", "qos_depth"} <= read_only


def test_choice_lists_come_from_the_registries() -> None:
    from sfm_ros.backends import BACKENDS
    from sfm_ros.bundle import ONNX_SUFFIXES, PRECISIONS
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.scale import SCALE_ESTIMATORS, ScaleObservation, make_scale_estimator

    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    assert fields["backend"].metadata["choices"] == ("auto", *BACKENDS)
    assert fields["precision"].metadata["choices"] == PRECISIONS and set(PRECISIONS) <= set(ONNX_SUFFIXES)
    sources = {f.name: f for f in dataclasses.fields(ScaleConfig)}["source"].metadata["choices"]
    assert set(sources) == {source.value for source in SCALE_ESTIMATORS}
    for source in sources:  # one interface: an observation in, an estimate out; a speed is accepted by all
        estimator = make_scale_estimator(ScaleConfig(source=source))
        estimator.observe_speed(5.0)
        estimate = estimator.update(ScaleObservation(translation_units=0.5, dt_s=0.1, depth=np.full((8, 8), 2.0),
                                                     K=np.array([[8.0, 0, 3.5], [0, 8.0, 3.5], [0, 0, 1]])))
        assert estimate.source.value == source


def test_a_ros_parameter_file_loads_from_under_its_node(tmp_path) -> None:
    """The CLI reads the node's own parameter file: values nested under <node>: ros__parameters:."""
    path = tmp_path / "params.yaml"
    path.write_text("sfm:\n  ros__parameters:\n    odom_frame: odom_visual\n    pipeline:\n      bundle: /b\n")
    config = load_config(NodeConfig, path, ["scale.source=none"])
    assert (config.odom_frame, config.pipeline.bundle, config.scale.source) == ("odom_visual", "/b", "none")
    assert load_config(NodeConfig, REPO / "config" / "sfm.yaml") == NodeConfig()
