"""The ``sfm`` command: prepare, train, export, quantize, replay, eval, bench, demo.

This is the composition root: it is the one place in ``sfm_ros`` that reaches into ``training`` (lazily, only
for the sub-commands that train), so the runtime package never depends on the trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

# The repository's sample of KITTI odometry sequence 06 (a source checkout; an installed package has no test/ folder).
SAMPLE_SEQUENCE = Path(__file__).resolve().parents[1] / "test" / "data" / "kitti_odometry" / "sequences" / "06"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _node_config(args: argparse.Namespace) -> Any:
    """NodeConfig from a ROS parameter file (default config/sfm.yaml when present) plus command-line overrides."""
    from sfm_ros.config import NodeConfig, load_config

    overrides = list(args.set or [])
    if getattr(args, "bundle", None):
        overrides.append(f"pipeline.bundle={args.bundle}")
    if getattr(args, "backend", None):
        overrides.append(f"pipeline.backend={args.backend}")
    if getattr(args, "scale_source", None):
        overrides.append(f"scale.source={args.scale_source}")
    path = args.params or ("config/sfm.yaml" if Path("config/sfm.yaml").is_file() else None)
    return load_config(NodeConfig, path, overrides)


def _pipeline(config: Any) -> Any:
    """The run-time Pipeline of a NodeConfig; no bundle is an error saying how to give one."""
    from sfm_ros.config import ConfigError
    from sfm_ros.odometry.pipeline import Pipeline

    if not config.pipeline.bundle:
        raise ConfigError("no model bundle: give --bundle BUNDLE (or pipeline.bundle in --params or --set)")
    return Pipeline(config.pipeline, config.scale)


# ---- sub-commands -----------------------------------------------------------------------------------------

def cmd_prepare_cache(args: argparse.Namespace) -> int:
    from training.config import load_train_config
    from training.data import prepare_cache

    config = load_train_config(args.config, args.set or [])
    out = prepare_cache(config.data, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"cache written to {out}")
    return 0


def cmd_kitti_to_bag(args: argparse.Namespace) -> int:
    from sfm_ros import kitti
    from sfm_ros.bags import kitti_to_bag

    source = Path(args.source)
    if any((source / f"image_{c:02d}").is_dir() for c in range(4)):
        sequence = kitti.kitti_raw_drive(source, args.camera if args.camera is not None else 2)
        ground_truth = None
        oxts_drive = Path(args.oxts) if args.oxts else source if (source / "oxts").is_dir() else None
        if oxts_drive is not None:
            _, poses = kitti.oxts_camera_poses(oxts_drive, sequence.camera)
            if len(poses) < len(sequence):
                raise SystemExit(f"{oxts_drive} has {len(poses)} OXTS packets for {len(sequence)} frames")
            ground_truth = poses[[int(p.stem) for p in sequence.image_paths]]
    else:
        camera = args.camera if args.camera is not None else (2 if (source / "image_2").is_dir() else 0)
        sequence = kitti.kitti_odometry_sequence(source, camera, args.poses)
        ground_truth = None
    out = kitti_to_bag(sequence, args.out, compressed=args.compressed, ground_truth=ground_truth,
                       overwrite=args.overwrite, progress=not args.quiet)
    has_truth = ground_truth is not None or sequence.poses is not None
    print(f"wrote {out} ({len(sequence)} frames{', with ground truth' if has_truth else ''})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import tempfile

    from training.config import load_train_config
    from training.data import prepare_cache
    from training.trainer import Trainer, check_init_bundle, config_from_checkpoint

    overrides = list(args.set or [])
    if args.output:
        overrides.append(f"run.output={args.output}")
    if args.init_from:
        if args.resume:
            raise SystemExit("--init-from starts a new run; --resume continues one (its weights come from the "
                             "checkpoint): give one of them")
        overrides.append(f"model.init_from={args.init_from}")
    if args.resume and not args.config:
        config = _resumed_config(config_from_checkpoint(args.resume), overrides)
    else:
        config = load_train_config(args.config, overrides)
    if config.model.init_from and not args.resume:
        check_init_bundle(config.model.init_from, config)  # before minutes of data preparation
    with contextlib.ExitStack() as cleanup:
        cache = args.cache
        if cache is None:  # a temporary cache, removed when the run ends however it ends (short of SIGKILL)
            cache = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sfm_cache_"))) / "cache"
            prepare_cache(config.data, cache, progress=config.run.progress)
        trainer = Trainer(config, cache)
        if args.resume:
            trainer.resume(args.resume)
        summary = trainer.fit()
    summary.pop("history")
    _print_json(summary)
    return 130 if summary["stopped_by"] else 0


# Sections of a training config that a resumed run may change: how it runs and how long (the schedule), not what it
# learns; model, data and loss shape the networks and the optimiser's state, so the checkpoint's are kept.
RESUMABLE_SECTIONS = ("run", "optim")


def _resumed_config(saved: Any, overrides: list[str]) -> Any:
    """The checkpoint's training config with --set/--output overrides of the run and optim sections; others are a
    ConfigError saying why."""
    from sfm_ros.config import ConfigError, apply_overrides, from_dict, to_dict
    from training.config import TrainConfig

    frozen = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in RESUMABLE_SECTIONS]
    if frozen:
        raise ConfigError(f"--resume without --config keeps the checkpoint's model, data and loss config (its networks "
                          f"and optimiser state were trained with them), so {frozen} cannot apply; only "
                          f"{', '.join(f'{s}.*' for s in RESUMABLE_SECTIONS)} and --output can. Start a new run "
                          "with --config to change them")
    return from_dict(TrainConfig, apply_overrides(to_dict(saved), overrides))


def cmd_export(args: argparse.Namespace) -> int:
    from sfm_ros.bundle import staged_bundle
    from sfm_ros.export import export_bundle

    if args.precision == "int8" and not args.int8_bag:  # before the export, not after its minutes of work
        raise SystemExit("--precision int8 needs --int8-bag BAG for calibration frames")
    # Export (and INT8) on a copy put in place only when every step passed: a failed check changes nothing.
    with staged_bundle(args.bundle) as staged:
        report = export_bundle(staged, fp16=not args.no_fp16, with_mask=args.mask, verify=not args.no_verify,
                               restructure=not args.as_trained_graph)
        models = {name: {k: v for k, v in entry.items() if k in ("file", "parity", "tensorrt_missing")}
                  for name, entry in report["models"].items()}
        _print_json({"bundle": args.bundle, "opset": report["opset"], "tolerances": report["tolerances"],
                     "models": models})
        if args.precision == "int8":
            from sfm_ros.quantize import quantize_bundle

            # INT8 for onnxruntime's CPU provider, and the Q/DQ models TensorRT builds INT8 engines from.
            _print_json(quantize_bundle(staged, args.int8_bag, max_windows=args.int8_windows,
                                        method=args.int8_calibration, progress=True,
                                        targets=("onnxruntime", "tensorrt"), image_topic=args.image_topic,
                                        info_topic=args.camera_info_topic, rectify=args.rectify))
    if args.engine:
        from sfm_ros.backends.tensorrt_backend import TensorRTBackend, tensorrt_plan, trtexec_command
        from sfm_ros.bundle import onnx_path, read_metadata

        plan = tensorrt_plan(args.precision)
        for model in ("depth", "pose"):
            print("equivalent:", trtexec_command(onnx_path(args.bundle, model, plan.onnx_kind), f"{model}.engine",
                                                 plan))
        backend = TensorRTBackend(Path(args.bundle), read_metadata(args.bundle), precision=args.precision,
                                  engine_cache_dir=args.engine_cache)
        print(f"engines ready in {args.engine_cache}: {backend.description}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from sfm_ros.quantize import quantize_bundle

    _print_json(quantize_bundle(args.bundle, args.bag, max_windows=args.windows, method=args.calibration,
                                polyphase=not args.keep_transposed_convs, progress=not args.quiet,
                                targets=tuple(args.targets), image_topic=args.image_topic,
                                info_topic=args.camera_info_topic, rectify=args.rectify))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from sfm_ros.backends import check_mask_output
    from sfm_ros.replay import replay_bag

    config = _node_config(args)
    pipeline = _pipeline(config)
    check_mask_output(pipeline.backend, config.publish_mask)
    print(f"backend: {pipeline.backend.description}")
    summary = replay_bag(args.bag, pipeline, args.output, realtime=args.realtime, gt_topic=args.gt_topic,
                         odom_frame=config.odom_frame, base_frame=config.base_frame,
                         publish_mask=config.publish_mask, overwrite=args.overwrite, progress=not args.quiet,
                         image_topic=args.image_topic, info_topic=args.camera_info_topic,
                         intrinsics=None if config.use_camera_info else config.camera_matrix(),
                         rectify=config.rectify)
    if summary.malformed:  # as the node's diagnostics: skipped, counted, said
        print(f"skipped {sum(summary.malformed.values())} messages that could not be used: "
              f"{dict(summary.malformed)}", file=sys.stderr)
    data = summary.as_dict()
    evaluation = data.pop("evaluation")
    data["events"] = data["events"][:20]
    _print_json(data)
    if evaluation:
        print(f"pose: snippet ATE {evaluation['snippet_ate']['mean']:.4f} +- {evaluation['snippet_ate']['std']:.4f}, "
              f"ATE Sim(3) {evaluation['sim3']['ate_rmse_m']:.3f} m, SE(3) {evaluation['se3']['ate_rmse_m']:.3f} m; "
              f"report: {Path(args.output) / 'report' / 'index.html'}")
    return 0


def cmd_eval_depth(args: argparse.Namespace) -> int:
    from sfm_ros.backends import make_backend
    from sfm_ros.evaluate import depth_samples_from_drive, depth_samples_from_list, evaluate_depth

    if bool(args.drive) == bool(args.list):
        raise SystemExit("give either --drive DRIVE_SYNC_FOLDER or --list LIST --kitti-root ROOT")
    samples = (depth_samples_from_drive(args.drive) if args.drive
               else depth_samples_from_list(args.list, args.kitti_root))
    backend = make_backend(args.bundle, args.backend, precision=args.precision)
    metric_scale = None
    if args.metric_scale:
        from sfm_ros.config import ScaleConfig

        metric_scale = ScaleConfig(source="camera_height", camera_height_m=args.camera_height)
    report = evaluate_depth(backend, samples, args.output, median_scaling=not args.no_median_scaling,
                            progress=not args.quiet, metric_scale=metric_scale)
    report.pop("per_image")
    _print_json(report)
    return 0


def cmd_eval_pose(args: argparse.Namespace) -> int:
    from sfm_ros import kitti
    from sfm_ros.bags import read_odometry
    from sfm_ros.evaluate import evaluate_pose, read_tum, run_sequence

    if args.gt_bag:
        gt_stamps, gt_poses, _ = read_odometry(args.gt_bag, args.gt_topic)
    elif args.gt_oxts:
        gt_stamps, gt_poses = kitti.oxts_camera_poses(args.gt_oxts)
    elif args.sequence:
        sequence = kitti.kitti_odometry_sequence(args.sequence, args.camera, args.gt_poses)
        if sequence.poses is None:
            raise SystemExit(f"{args.sequence} has no ground-truth poses: give --gt-poses")
        gt_stamps, gt_poses = sequence.stamps_ns, sequence.poses
    else:
        raise SystemExit("give ground truth: --sequence (KITTI odometry), --gt-bag or --gt-oxts")
    if args.estimate:
        est_stamps, est_poses = read_tum(args.estimate)
    else:
        if not (args.sequence and args.bundle):
            raise SystemExit("without --estimate, give --sequence and --bundle to run the model")
        config = _node_config(args)
        est_stamps, est_poses = run_sequence(_pipeline(config),
                                             kitti.kitti_odometry_sequence(args.sequence, args.camera),
                                             progress=not args.quiet)
    report = evaluate_pose(gt_stamps, gt_poses, est_stamps, est_poses, args.output,
                           snippet_length=args.snippet_length)
    _print_json(report)
    return 0


def cmd_bench_inference(args: argparse.Namespace) -> int:
    from sfm_ros.bench import bench_inference

    _print_json(bench_inference(args.bundle, args.backend, args.repeats, args.device, args.precision, args.threads))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from training.bench import bench_train

    result = bench_train(args.batch_sizes, args.steps, args.height, args.width, args.device, tuple(args.modes))
    _print_json(result)
    return 1 if any("error" in row for row in result["results"]) else 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from training.bench import bench_data

    result = bench_data(args.cache, args.workers, args.batch, args.epochs)
    table = ", ".join(f"{row['workers']} workers: {row['snippets_per_s']:.0f} snippets/s" for row in result["results"])
    return _report_bench(result, table)


def _report_bench(result: dict, table: str, leave_out: str | None = None) -> int:
    """A benchmark's result as JSON on stdout (with the commit; ``leave_out``: a bulky key kept to the files) and its
    table on stderr."""
    from sfm_ros.bench import git_commit

    result["commit"] = git_commit()
    _print_json({key: value for key, value in result.items() if key != leave_out})
    print(table, file=sys.stderr)
    return 0


def cmd_bench_learning(args: argparse.Namespace) -> int:
    from training.learning_bench import format_table, run_from_arguments

    result = run_from_arguments(args)
    return _report_bench(result, format_table(result), leave_out="variants")


def cmd_bench_real(args: argparse.Namespace) -> int:
    from training.real_bench import format_real_table, run_from_arguments

    result = run_from_arguments(args)
    return _report_bench(result, format_real_table(result), leave_out="starts")


def cmd_bench_odometry(args: argparse.Namespace) -> int:
    from training.odometry_bench import bench_odometry, format_table
    from training.synth_streets import default_streets

    config = _node_config(args)
    streets = None if args.no_streets else (args.data or str(default_streets()))
    result = bench_odometry(args.bundle, streets, args.kitti or [], args.output, config.pipeline, config.scale,
                            progress=not args.quiet, standstill_frames=args.standstill_frames)
    return _report_bench(result, format_table(result))


def cmd_bench_node(args: argparse.Namespace) -> int:
    from sfm_ros import kitti
    from sfm_ros.bench import machine_description
    from sfm_ros.benchmarks.node_load import KITTI_RAW_LENS, as_raw, bench_node_load
    from sfm_ros.camera import CameraModel

    folder = args.kitti or SAMPLE_SEQUENCE
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"no KITTI odometry sequence at {folder}: give --kitti SEQUENCE_DIR")
    config = _node_config(args)
    sequence = kitti.kitti_odometry_sequence(folder)
    frames = [kitti.load_rgb(path) for path in sequence.image_paths]
    rectify = config.rectify
    # With rectify the frames are offered as raw ones of a KITTI-like lens, so the worker undistorts each as the node's.
    lens = {"D": KITTI_RAW_LENS, "K_raw": sequence.K} if rectify else {}
    camera = CameraModel(K=sequence.K, height=sequence.size[0], width=sequence.size[1], **lens)
    if rectify:
        frames = as_raw(frames, camera)
    pipeline = _pipeline(config)
    load = bench_node_load(pipeline, frames, camera, args.minutes, args.rate, progress=not args.quiet,
                           rectify=rectify)
    result = {"benchmark": f"node load (worker{' + rectify' if rectify else ''} + pipeline), {len(frames)} frames "
                           f"of {folder}{' as raw ones of a KITTI-like lens' if rectify else ''} looped, "
                           f"{camera.width}x{camera.height}",
              "backend": pipeline.backend.description, "precision": config.pipeline.precision,
              "odometry": config.pipeline.odometry, "rectify": rectify, **load, "machine": machine_description()}
    latency = load["latency_ms"]
    table = (f"processed {load['processed']} of {load['offered']} frames offered at {args.rate:g} Hz: "
             f"{load['processed_hz']:.1f} Hz; latency p50 {latency['p50']:.0f} ms, p90 {latency['p90']:.0f} ms; "
             f"resident memory {load['rss_mb_first_half_max']:.0f} -> {load['rss_mb_second_half_max'] or 0:.0f} MiB")
    return _report_bench(result, table)


def cmd_demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo

    return run_demo(Path(args.output), steps=args.steps, sample=Path(args.sample), quiet=args.quiet)


# ---- parser -----------------------------------------------------------------------------------------------

def learning_arguments(parser: argparse.ArgumentParser) -> None:
    """``sfm bench learning``'s options (benchmarks/bench_learning.py is the same command)."""
    parser.add_argument("--data", help="synth_streets folder: train.npz/val.npz, or train/ and val/ street folders "
                                       "(default: ../shared/data/synth_streets, else the repository's sample)")
    parser.add_argument("--config", help="training preset of the single variant (default: none, the default "
                                         "recipe of training/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    parser.add_argument("--variants", help="YAML of variants (name: {preset, set}); replaces --config/--set")
    parser.add_argument("--only", nargs="+", help="run only these variants of the file")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--eval-every", type=int, default=250, help="evaluate every N steps (and at the end)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--height", type=int, help="input height (default: 64 on a CPU, 128 with CUDA)")
    parser.add_argument("--width", type=int, help="input width (default: 208 on a CPU, 416 with CUDA)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: the preset's, at most cores - 2)")
    parser.add_argument("--max-depth-frames", type=int, default=0,
                        help="evaluate depth on about this many held-out frames (0: all)")
    parser.add_argument("--output", default="runs/bench_learning", help="records, learning.json and the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def camera_topic_options(parser: argparse.ArgumentParser, whose: str) -> None:
    """--image-topic and --camera-info-topic: which camera of a bag with several (default: the only one)."""
    parser.add_argument("--image-topic", help=f"{whose} sensor_msgs Image or CompressedImage topic (default: the "
                                              "only one, or the only raw one)")
    parser.add_argument("--camera-info-topic", help=f"{whose} CameraInfo topic (default: camera_info beside the image "
                                                    "topic, or the only one)")


def rectify_option(parser: argparse.ArgumentParser, whose: str) -> None:
    """--rectify: the bag's images are raw, as the node's ``rectify`` parameter says of the camera topic."""
    parser.add_argument("--rectify", action="store_true", help=f"{whose} images are raw images of a distorting lens: "
                                                               "undistort them with its CameraInfo first (as the "
                                                               "node's rectify; set both alike)")


def node_options(sub: argparse.ArgumentParser, bundle_required: bool = False) -> None:
    """The node's configuration on a command that runs the pipeline: the parameter file, overrides, shortcuts."""
    from sfm_ros.backends import BACKEND_CHOICES
    from sfm_ros.scale import ScaleSource

    sub.add_argument("--bundle", required=bundle_required, help="model bundle (pipeline.bundle)")
    sub.add_argument("--backend", choices=BACKEND_CHOICES, help="pipeline.backend")
    sub.add_argument("--scale-source", choices=tuple(source.value for source in ScaleSource), help="scale.source")
    sub.add_argument("--params", help="node parameter file (default config/sfm.yaml when present)")
    sub.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. scale.camera_height_m=1.5")


def _add_prepare(commands: Any) -> None:
    """sfm prepare cache | kitti-to-bag."""
    prepare = commands.add_parser("prepare", help="build a training cache, or convert KITTI to a rosbag2")
    prepare_kinds = prepare.add_subparsers(dest="kind", required=True, metavar="KIND")
    cache = prepare_kinds.add_parser("cache", help="preprocess training sources into a memory-mapped cache")
    cache.add_argument("--config", help="training preset, e.g. config/train_kitti.yaml")
    cache.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. data.sources=[a,b]")
    cache.add_argument("--out", required=True, help="cache folder to create")
    cache.add_argument("--overwrite", action="store_true")
    cache.add_argument("--quiet", action="store_true")
    cache.set_defaults(func=cmd_prepare_cache)
    to_bag = prepare_kinds.add_parser("kitti-to-bag", help="KITTI raw drive or odometry sequence -> MCAP rosbag2")
    to_bag.add_argument("source", help="a *_sync drive folder or an odometry sequences/NN folder")
    to_bag.add_argument("out", help="bag folder to create")
    to_bag.add_argument("--camera", type=int, help="KITTI camera (raw: 2; odometry: 2 if present, else 0)")
    to_bag.add_argument("--compressed", action="store_true", help="JPEG CompressedImage instead of raw rgb8")
    to_bag.add_argument("--poses", help="odometry ground-truth pose file (default ../../poses/NN.txt)")
    to_bag.add_argument("--oxts", help="raw drive whose OXTS gives ground truth (default: the drive itself)")
    to_bag.add_argument("--overwrite", action="store_true")
    to_bag.add_argument("--quiet", action="store_true")
    to_bag.set_defaults(func=cmd_kitti_to_bag)


def _add_train(commands: Any) -> None:
    """sfm train."""
    train = commands.add_parser("train", help="train depth and pose networks on unlabelled video")
    train.add_argument("--config", help="training preset (config/train_kitti.yaml, config/train_cpu_small.yaml)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config value")
    train.add_argument("--cache", help="a prepared cache (default: prepare the sources into a temporary one)")
    train.add_argument("--output", help="run folder (checkpoint, tensorboard, bundle)")
    train.add_argument("--resume", help="checkpoint to continue from exactly; without --config its own config, where "
                                        "--set and --output may change run.* and optim.* only")
    train.add_argument("--init-from", metavar="BUNDLE",
                       help="start both networks from a model bundle's weights and train on these sources with a "
                            "fresh optimiser (fine-tuning); the bundle's networks (input size, source count, mask, "
                            "output constants, depth frames, pose scale) must be the config's (model.init_from)")
    train.set_defaults(func=cmd_train)


def _add_export(commands: Any) -> None:
    """sfm export and sfm quantize."""
    from sfm_ros.bundle import PRECISIONS
    from sfm_ros.quantize import CALIBRATION_METHODS, QUANTIZE_TARGETS

    export = commands.add_parser("export", help="export a bundle to ONNX (verified), optionally build engines")
    export.add_argument("bundle")
    export.add_argument("--no-fp16", action="store_true", help="skip the fp16 ONNX variant")
    export.add_argument("--mask", action="store_true", help="export the explainability mask output too")
    export.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity check")
    export.add_argument("--as-trained-graph", action="store_true",
                        help="export the networks' graphs unchanged, not the equivalent CPU-friendly restructuring")
    export.add_argument("--engine", action="store_true", help="also build TensorRT engines here (on the target)")
    export.add_argument("--precision", default="fp16", choices=PRECISIONS,
                        help="int8 also writes INT8 models, checked against fp32: onnxruntime's (CPU) and the Q/DQ "
                             "models TensorRT builds INT8 engines from")
    export.add_argument("--int8-bag", help="bag whose frames calibrate INT8 (and, for onnxruntime, check it)")
    export.add_argument("--int8-windows", type=int, default=64, help="frame windows read from the bag")
    export.add_argument("--int8-calibration", default="minmax", choices=CALIBRATION_METHODS,
                        help="onnxruntime activation-range method")
    export.add_argument("--engine-cache", default="~/.cache/sfm_ros/engines")
    camera_topic_options(export, "--int8-bag's")
    rectify_option(export, "--int8-bag's")
    export.set_defaults(func=cmd_export)


    quantize = commands.add_parser(
        "quantize", help="INT8 models from an exported bundle, calibrated and checked on a bag (no torch needed): "
                         "onnxruntime's for CPUs, and/or the Q/DQ models TensorRT builds INT8 engines from")
    quantize.add_argument("bundle", help="a bundle exported with `sfm export`")
    quantize.add_argument("bag", help="bag whose camera frames calibrate INT8 and check it")
    quantize.add_argument("--windows", type=int, default=64, help="frame windows read from the bag")
    quantize.add_argument("--calibration", default="minmax", choices=CALIBRATION_METHODS,
                          help="activation-range method")
    quantize.add_argument("--keep-transposed-convs", action="store_true",
                          help="leave ConvTranspose in fp32 instead of rewriting it as four INT8 convolutions")
    quantize.add_argument("--for", dest="targets", nargs="+", default=["onnxruntime"], choices=list(QUANTIZE_TARGETS),
                          help="runtimes to quantise for (default onnxruntime)")
    rectify_option(quantize, "the bag's")
    quantize.add_argument("--quiet", action="store_true", help="no progress bars")
    camera_topic_options(quantize, "the bag's")
    quantize.set_defaults(func=cmd_quantize)


def _add_replay_and_eval(commands: Any) -> None:
    """sfm replay and sfm eval depth | pose."""
    from sfm_ros.backends import BACKEND_CHOICES
    from sfm_ros.bundle import PRECISIONS

    replay = commands.add_parser("replay", help="run the node's pipeline over a bag, write an output bag")
    replay.add_argument("bag")
    replay.add_argument("--output", required=True, help="folder for the output bag, trajectory and report")
    replay.add_argument("--realtime", action="store_true", help="recorded speed, dropping frames like the node")
    replay.add_argument("--gt-topic", help="ground-truth nav_msgs/Odometry topic (default: auto)")
    replay.add_argument("--overwrite", action="store_true")
    replay.add_argument("--quiet", action="store_true")
    camera_topic_options(replay, "the bag's")
    node_options(replay)
    replay.set_defaults(func=cmd_replay)


    evaluate = commands.add_parser("eval", help="evaluate depth (Eigen) or pose (ATE, RPE, KITTI)")
    eval_kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="KIND")
    depth = eval_kinds.add_parser("depth", help="Eigen depth protocol against KITTI LiDAR")
    depth.add_argument("--bundle", required=True)
    depth.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    depth.add_argument("--precision", default="fp16", choices=PRECISIONS,
                       help="fp16 runs on GPUs only (a CPU runs fp32); int8 needs `sfm export --precision int8`")
    depth.add_argument("--drive", help="a KITTI raw *_sync drive with velodyne_points")
    depth.add_argument("--list", help="an Eigen-format list (e.g. sfm_ros/data/test_files_eigen.txt)")
    depth.add_argument("--kitti-root", help="KITTI raw root for --list")
    depth.add_argument("--no-median-scaling", action="store_true", help="for metric models")
    depth.add_argument("--metric-scale", action="store_true",
                       help="scale each prediction by the camera-height ground-plane estimate, no median scaling")
    depth.add_argument("--camera-height", type=float, default=1.65, help="metres, for --metric-scale (KITTI 1.65)")
    depth.add_argument("--output", help="report folder")
    depth.add_argument("--quiet", action="store_true")
    depth.set_defaults(func=cmd_eval_depth)
    pose = eval_kinds.add_parser("pose", help="snippet ATE, trajectory ATE/RPE, KITTI segment errors")
    pose.add_argument("--sequence", help="KITTI odometry sequences/NN folder (ground truth and images)")
    pose.add_argument("--camera", type=int, default=0)
    pose.add_argument("--gt-poses", help="KITTI pose file for --sequence")
    pose.add_argument("--gt-bag", help="bag with a ground-truth Odometry topic")
    pose.add_argument("--gt-topic")
    pose.add_argument("--gt-oxts", help="KITTI raw drive with OXTS")
    pose.add_argument("--estimate", help="TUM trajectory (from sfm replay) instead of running the model")
    pose.add_argument("--snippet-length", type=int, default=5)
    pose.add_argument("--output", help="report folder")
    pose.add_argument("--quiet", action="store_true")
    node_options(pose)
    pose.set_defaults(func=cmd_eval_pose)


def _add_bench(commands: Any) -> None:
    """sfm bench inference | train | data | learning | real | odometry | node."""
    bench = commands.add_parser("bench", help="measure inference latency, training throughput or whether a training "
                                              "recipe learns (prints JSON)")
    bench_kinds = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    inference = bench_kinds.add_parser("inference", help="depth + pose latency of a bundle through a backend")
    inference.add_argument("--bundle", required=True, help="model bundle")
    inference.add_argument("--backend", default="auto")
    inference.add_argument("--device", default="auto")
    inference.add_argument("--precision", default="fp16")
    inference.add_argument("--threads", type=int, default=0)
    inference.add_argument("--repeats", type=int, default=30)
    inference.set_defaults(func=cmd_bench_inference)
    train_speed = bench_kinds.add_parser("train", help="images/s of the training step")
    train_speed.add_argument("--device", default="auto")
    train_speed.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32])
    train_speed.add_argument("--steps", type=int, default=20)
    train_speed.add_argument("--height", type=int, default=128)
    train_speed.add_argument("--width", type=int, default=416)
    train_speed.add_argument("--modes", nargs="+", default=["baseline", "fast"],
                             help="speed paths to time (baseline = fp32 eager, the reference; fast = bf16 + "
                                  "channels-last + torch.compile + CUDA graph; also amp, amp-nchw, fp32-graph, "
                                  "bf16-graph, graph, compile-networks-graph: see training/bench.py)")
    train_speed.set_defaults(func=cmd_bench_train)
    data = bench_kinds.add_parser("data", help="augmented training snippets/s from a cache, per DataLoader worker "
                                               "count (how many workers feed a GPU's step)")
    data.add_argument("--cache", required=True, help="a cache from `sfm prepare cache`")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    data.add_argument("--batch", type=int, default=16)
    data.add_argument("--epochs", type=int, default=20, help="passes over the cache per worker count")
    data.set_defaults(func=cmd_bench_data)
    learning = bench_kinds.add_parser(
        "learning", help="train a recipe on rendered streets and score depth and motion against their exact truth",
        description="Train each variant on synth_streets' training streets (read as image folders through the "
                    "training cache) and score depth (abs_rel, sq_rel, rmse, a1; median-scaled) and the 5-frame "
                    "snippet ATE on the held-out streets along the way, beside constant baselines.")
    learning_arguments(learning)
    learning.set_defaults(func=cmd_bench_learning)
    real = bench_kinds.add_parser(
        "real", help="with a short real recording, which start is better: trained on it from scratch, a "
                     "rendered-streets model fine-tuned on it, or that model alone",
        description="Train on a real drive's frames (default: KITTI 00 frames 0-149, written as an image folder with "
                    "intrinsics.yaml and read through the training cache) from scratch and from a rendered-streets "
                    "bundle (fine-tuned, as `sfm train --init-from`), and score those two and the bundle alone on "
                    "frames none trained on: motion (5-frame snippet ATE; default KITTI 00 frames 150-199 and 06 "
                    "frames 0-50) and depth (Eigen abs_rel against LiDAR; default raw drive 2011_09_26_0060), "
                    "beside constant forward motion and one constant depth. Every start runs at the bundle's size.")
    real.add_argument("--bundle", required=True, help="the rendered-streets model bundle (e.g. from "
                                                      "`sfm bench learning` or `sfm train` on synth_streets)")
    real.add_argument("--config", help="training preset of both trainings (default: the default recipe)")
    real.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    real.add_argument("--steps", type=int, default=2000, help="training steps of the scratch and fine-tuned starts")
    real.add_argument("--eval-every", type=int, default=500, help="score every N steps (and at the end)")
    real.add_argument("--seeds", type=int, nargs="+", default=[0])
    real.add_argument("--starts", nargs="+", default=["streets", "scratch", "finetune"],
                      choices=["streets", "scratch", "finetune"], help="which starts to run (default: all three)")
    real.add_argument("--train", metavar="SEQUENCE_DIR:FIRST-LAST",
                      help="KITTI odometry frames to train on (default: ../shared/data's sequence 00, 0-149)")
    real.add_argument("--motion", nargs="+", metavar="SEQUENCE_DIR:FIRST-LAST",
                      help="frame ranges (with ground-truth poses) scored for motion (default: 00 150-199, 06 0-50)")
    real.add_argument("--depth-drive", help="KITTI raw *_sync drive with LiDAR scored for depth "
                                            "(default: ../shared/data's 2011_09_26_drive_0060_sync)")
    real.add_argument("--workers", type=int, help="DataLoader workers (default: the preset's, at most cores - 2)")
    real.add_argument("--output", default="runs/bench_real", help="records, frame folders, caches, real.json")
    real.add_argument("--quiet", action="store_true", help="no progress bars")
    real.set_defaults(func=cmd_bench_real)
    odometry = bench_kinds.add_parser(
        "odometry", help="the node's pipeline over held-out rendered streets and KITTI, beside the network chain and "
                         "a classical VO: metric ATE, drift, depth",
        description="Run the run-time Pipeline (with its own metric scale) over every held-out rendered street (val "
                    "and, when the data has it, val_unseen) and the given KITTI odometry sequences; report SE(3)/"
                    "Sim(3) ATE, RPE, end-point drift, step-length ratio, metric depth abs_rel, healthy-scale share "
                    "and per-stage latency, with plots; beside it, on the same frames, the network chain alone and a "
                    "classical monocular VO (tracked corners, essential matrix, scale from the road at the camera's "
                    "height), with each sequence's top view of all three against the truth (NAME/top_view.png).")
    odometry.add_argument("--data", help="synth_streets folder (default: ../shared/data/synth_streets, else the "
                                         "repository's sample)")
    odometry.add_argument("--no-streets", action="store_true", help="only the KITTI sequences")
    odometry.add_argument("--kitti", nargs="*", metavar="DIR[:FIRST:LAST]",
                          help="KITTI odometry sequence folders with poses; :FIRST:LAST scores only the frames so "
                               "numbered, both included (sequences/00:150:199: frames a model trained on 0-149 "
                               "did not see)")
    node_options(odometry, bundle_required=True)
    odometry.add_argument("--standstill-frames", type=int, default=90,
                          help="also hold each street still this many frames at 30 Hz with sensor noise (0: no)")
    odometry.add_argument("--output", default="runs/bench_odometry")
    odometry.add_argument("--quiet", action="store_true")
    odometry.set_defaults(func=cmd_bench_odometry)
    node = bench_kinds.add_parser(
        "node", help="the node's load: frames offered at a camera's rate for minutes; the rate it keeps up, latency, "
                     "memory",
        description="Offer a KITTI odometry sequence's frames (looped) at --rate to the node's worker thread (the "
                    "newest frame wins) running the pipeline with the node's parameters, for --minutes, without ROS. "
                    "Reports the processed rate, offer-to-result latency, each stage's median time and resident "
                    "memory over time (it must stay flat).")
    node.add_argument("--kitti", metavar="SEQUENCE_DIR",
                      help="KITTI odometry sequence folder (default: the repository's sample of sequence 06)")
    node.add_argument("--minutes", type=float, default=3.0, help="how long frames are offered")
    node.add_argument("--rate", type=float, default=30.0, help="the camera's rate, frames a second")
    node_options(node, bundle_required=True)
    node.add_argument("--quiet", action="store_true")
    node.set_defaults(func=cmd_bench_node)


def _add_demo(commands: Any) -> None:
    """sfm demo."""
    demo = commands.add_parser("demo", help="the whole story on the bundled rendered streets and KITTI sample")
    demo.add_argument("--output", default="demo_output")
    demo.add_argument("--steps", type=int, help="training steps (default: 600 on CPU, 3000 on a GPU)")
    demo.add_argument("--sample", default="test/data", help="the bundled sample folder")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfm", description="SfMLearner depth and visual odometry: train on "
                                     "recorded drives, export to ONNX/TensorRT, replay bags, evaluate.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_train, _add_export, _add_replay_and_eval, _add_bench, _add_demo):
        add(commands)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors that carry a user-facing message: printed in one line instead of a traceback."""
    import importlib

    names = {"sfm_ros.backends": "BackendError", "sfm_ros.bundle": "BundleError", "sfm_ros.config": "ConfigError",
             "sfm_ros.kitti": "KittiError", "sfm_ros.ros_io": "ImageError", "sfm_ros.bags": "BagError",
             "sfm_ros.export": "ExportError", "sfm_ros.odometry.estimate": "FrameError", "training.data": "DataError",
             "sfm_ros.quantize": "QuantizeError", "training.trainer": "CheckpointError",
             "sfm_ros.evaluate": "EvaluationError"}
    found: list[type[BaseException]] = [FileNotFoundError]
    for module, name in names.items():
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:  # an optional dependency of that module is missing; its commands will say so
            continue
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _known_errors() as exc:
        print(f"sfm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
