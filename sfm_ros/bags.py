"""rosbag2 I/O with ``rosbags`` (no ROS install): camera topics in, messages out, KITTI -> bag.

Reading decodes ``sensor_msgs/Image`` or ``CompressedImage`` with ``CameraInfo`` (or given intrinsics) into
RGB frames, raw ones of a distorting lens undistorted on request (``rectify``). A recording cut short (power loss,
a killed recorder: an MCAP without its summary and footer, a bag folder without ``metadata.yaml``) is read as far
as it is intact, as ``mcap recover`` and ``ros2 bag reindex`` would, with a ``BagRecoveredWarning`` saying how much
was read and what was lost; the input is never written. Writing always goes to a temporary folder that is renamed
on success, so an exception never leaves a half-written bag under the requested name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sqlite3
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.camera import CameraModel, LensError, Rectifier
from sfm_ros.errors import error_kind
from sfm_ros.geometry import R_BASE_OPTICAL
from sfm_ros.ros_io import (
    ImageError,
    MessageTypes,
    camera_info_to_model,
    compressed_to_rgb,
    image_to_rgb,
    make_camera_info,
    make_header,
    make_odometry,
    make_transform,
    rgb_to_image_msg,
    stamp_to_ns,
)

__all__ = [
    "IMAGE_TYPES",
    "BagError",
    "BagRecoveredWarning",
    "BagWriter",
    "CameraFrame",
    "CameraTopics",
    "RecoveredReader",
    "find_camera_topics",
    "kitti_to_bag",
    "open_reader",
    "open_typestore",
    "read_camera_frames",
    "read_camera_stamps",
    "read_odometry",
]

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
ODOMETRY_TYPE = "nav_msgs/msg/Odometry"


class BagError(RuntimeError):
    """A bag is missing, unreadable, empty, or lacks the topics asked for."""


class BagRecoveredWarning(UserWarning):
    """A recording cut short was read as far as it is intact; the message says how much and what was lost."""


@dataclasses.dataclass(frozen=True)
class RecoveredConnection:
    """A topic of a recovered recording (the fields of rosbags' Connection that sfm_ros reads)."""

    id: int
    topic: str
    msgtype: str


_MCAP_READ_ERRORS = (EOFError, struct.error, ValueError, KeyError, OSError)
_WARNED: set[str] = set()


class RecoveredReader:
    """Every intact message of a rosbag2 recording that rosbags refuses: storage files (``.mcap`` read as a stream,
    record by record, up to the first damaged or missing one; ``.db3`` through sqlite) without ``metadata.yaml``
    or without an MCAP summary and footer. The surface sfm_ros uses of rosbags' Reader: ``connections``,
    ``message_count``, ``messages(connections)``. ``recovery`` says what was read and what was lost."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        if not files:
            raise BagError(f"{path} holds no .mcap or .db3 storage file (nor a metadata.yaml): not a rosbag2")
        self.path, self.files = path, files
        self._by_key: dict[tuple[int, int], RecoveredConnection] = {}
        lost, read_bytes, total_bytes, self.message_count = [], 0, 0, 0
        for number, file in enumerate(files):
            size = file.stat().st_size
            total_bytes += size
            if file.suffix == ".db3":
                count, error = self._scan_sqlite(number, file)
                read = size if error is None else 0
            else:
                count, read, error = self._scan_mcap(number, file)
            self.message_count += count
            read_bytes += read
            if error is not None:
                lost.append(f"{file.name}: {error}")
        self.connections = list(dict.fromkeys(self._by_key.values()))
        self.recovery = {"files": [f.name for f in files], "messages": self.message_count, "bytes_read": read_bytes,
                         "bytes_total": total_bytes, "lost": lost}

    def _connection(self, number: int, channel_id: int, topic: str, msgtype: str) -> RecoveredConnection:
        # One connection per (topic, type) across split files, as rosbags presents them.
        for connection in self._by_key.values():
            if (connection.topic, connection.msgtype) == (topic, msgtype):
                self._by_key[(number, channel_id)] = connection
                return connection
        connection = RecoveredConnection(len(set(self._by_key.values())) + 1, topic, msgtype)
        self._by_key[(number, channel_id)] = connection
        return connection

    def _mcap_records(self, number: int, file: Path) -> Iterator[tuple[Any, int]]:
        """(record, bytes consumed so far) until the file ends or a record is damaged (then raises)."""
        from mcap.records import Channel, Schema
        from mcap.stream_reader import StreamReader

        schemas: dict[int, str] = {}
        with open(file, "rb") as handle:
            for record in StreamReader(handle, validate_crcs=True).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel) and record.schema_id in schemas:
                    self._connection(number, record.id, record.topic, schemas[record.schema_id])
                yield record, handle.tell()

    def _scan_mcap(self, number: int, file: Path) -> tuple[int, int, str | None]:
        from mcap.exceptions import McapError
        from mcap.records import Message

        count, consumed = 0, 0
        try:
            for record, position in self._mcap_records(number, file):
                consumed = position  # the end of the last intact record
                count += isinstance(record, Message) and (number, record.channel_id) in self._by_key
        except (McapError, *_MCAP_READ_ERRORS) as exc:
            size = file.stat().st_size
            return count, consumed, (f"cut short after byte {consumed:,} of {size:,} ({type(exc).__name__}); "
                                     f"the last {size - consumed:,} bytes are lost")
        return count, consumed, None

    def _scan_sqlite(self, number: int, file: Path) -> tuple[int, str | None]:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
                for topic_id, name, msgtype in db.execute("SELECT id, name, type FROM topics"):
                    self._connection(number, topic_id, name, msgtype)
                return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]), None
        except sqlite3.DatabaseError as exc:
            return 0, f"unreadable sqlite storage: {exc}"

    def messages(self, connections: list[Any] | None = None) -> Iterator[tuple[RecoveredConnection, int, bytes]]:
        """(connection, log time ns, CDR bytes) of the wanted connections, file by file in recording order."""
        from mcap.exceptions import McapError
        from mcap.records import Message

        wanted = None if connections is None else {(c.topic, c.msgtype) for c in connections}
        for number, file in enumerate(self.files):
            if file.suffix == ".db3":
                with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
                    rows = db.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp")
                    for topic_id, stamp, data in rows:
                        connection = self._by_key.get((number, topic_id))
                        if connection and (wanted is None or (connection.topic, connection.msgtype) in wanted):
                            yield connection, int(stamp), bytes(data)
                continue
            try:
                for record, _ in self._mcap_records(number, file):
                    if isinstance(record, Message):
                        connection = self._by_key.get((number, record.channel_id))
                        if connection and (wanted is None or (connection.topic, connection.msgtype) in wanted):
                            yield connection, int(record.log_time), record.data
            except (McapError, *_MCAP_READ_ERRORS):
                continue  # the damage the scan reported: what follows it is lost

    def describe(self) -> str:
        """What was recovered and lost, in a sentence."""
        info = self.recovery
        share = info["bytes_read"] / max(info["bytes_total"], 1)
        lost = "; ".join(info["lost"]) or "nothing lost"
        without_metadata = self.path.is_dir() and not (self.path / "metadata.yaml").is_file()
        why = "no metadata.yaml" if without_metadata else "damaged storage"
        recorded = self.recorded_message_count()
        of_recorded = ""
        if recorded is not None:
            lost_count = max(recorded - info["messages"], 0)
            of_recorded = f" ({lost_count} of the {recorded} messages metadata.yaml says were recorded are lost)"
        return (f"bag {self.path} is incomplete ({why}): recovered {info['messages']} messages{of_recorded} from "
                f"{share:.0%} of the {info['bytes_total']:,} bytes on disk; {lost}. The input is left as it is "
                "(`ros2 bag reindex` rebuilds its metadata).")

    def recorded_message_count(self) -> int | None:
        """How many messages metadata.yaml says the recording holds (None without a readable one)."""
        import yaml

        path = self.path / "metadata.yaml" if self.path.is_dir() else self.path.parent / "metadata.yaml"
        try:
            count = yaml.safe_load(path.read_text())["rosbag2_bagfile_information"]["message_count"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
        return int(count) if isinstance(count, int) else None

    def close(self) -> None:
        """Nothing is held open between reads."""


def open_typestore(distro: str = "humble") -> Any:
    """A rosbags typestore for ROS 2 ``humble`` or ``jazzy`` (the message definitions used here agree)."""
    from rosbags.typesys import Stores, get_typestore

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise BagError(f"unknown ROS distro {distro!r}; choose from {sorted(stores)}")
    return get_typestore(stores[distro])


@dataclasses.dataclass(frozen=True)
class CameraTopics:
    """The image topic (and its type) and the CameraInfo topic (None: intrinsics given elsewhere)."""

    image: str
    image_type: str
    camera_info: str | None


@dataclasses.dataclass(frozen=True)
class CameraFrame:
    """One decoded frame: header stamp (ns), RGB uint8 [H,W,3], the camera model in force, the header frame, and the
    time the bag recorded it (ns; what `ros2 bag play` paces by)."""

    stamp_ns: int
    rgb: np.ndarray
    camera: CameraModel
    frame_id: str
    recorded_ns: int


@contextlib.contextmanager
def open_reader(path: Path | str) -> Iterator[Any]:
    """A rosbags Reader, opened; a missing or unreadable bag is a BagError."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, FileNotFoundError) as exc:
        # A recording cut short: read what is intact, say what was lost (never write to it).
        reader = RecoveredReader(path.parent if path.is_file() and path.suffix == ".yaml" else path)
        if not reader.message_count:
            raise BagError(f"cannot open bag {path}: {exc}; and no intact message could be recovered "
                           f"({'; '.join(reader.recovery['lost']) or 'it holds none'})") from None
        if str(path) not in _WARNED:  # once per recording and process, however often it is opened
            _WARNED.add(str(path))
            warnings.warn(reader.describe(), BagRecoveredWarning, stacklevel=3)
    try:
        yield reader
    finally:
        reader.close()


def find_camera_topics(connections: list[Any], image_topic: str | None = None,
                       info_topic: str | None = None, need_info: bool = True) -> CameraTopics:
    """Pick the image and CameraInfo topics; auto-detect when unambiguous, else list the candidates."""
    by_topic = {c.topic: c.msgtype for c in connections}
    images = sorted(t for t, m in by_topic.items() if m in IMAGE_TYPES)
    infos = sorted(t for t, m in by_topic.items() if m == CAMERA_INFO_TYPE)
    if image_topic is None:
        if not images:
            raise BagError(f"no sensor_msgs Image or CompressedImage topic in the bag; topics: {sorted(by_topic)}")
        raw = [t for t in images if by_topic[t] == IMAGE_TYPES[0]]
        pool = raw if len(raw) == 1 else images
        if len(pool) != 1:
            raise BagError(f"several image topics, choose one with --image-topic (data.image_topic in a training "
                           f"config): {images}")
        image_topic = pool[0]
    elif image_topic not in by_topic:
        raise BagError(f"image topic {image_topic!r} is not in the bag; image topics: {images}")
    elif by_topic[image_topic] not in IMAGE_TYPES:
        raise BagError(f"topic {image_topic!r} has type {by_topic[image_topic]}, not an image")
    if info_topic is None and need_info:
        namespace = image_topic.rsplit("/", 2 if image_topic.endswith("/compressed") else 1)[0]
        sibling = f"{namespace}/camera_info"
        if sibling in infos:
            info_topic = sibling
        elif len(infos) == 1:
            info_topic = infos[0]
        elif not infos:
            raise BagError("no sensor_msgs/CameraInfo topic in the bag: give the intrinsics (sfm replay: --set "
                           "use_camera_info=false --set intrinsics=[fx,fy,cx,cy]; training: data.intrinsics)")
        else:
            raise BagError(f"several CameraInfo topics, choose one with --camera-info-topic (data.info_topic in a "
                           f"training config): {infos}")
    elif info_topic is not None and by_topic.get(info_topic) != CAMERA_INFO_TYPE:
        raise BagError(f"CameraInfo topic {info_topic!r} is not in the bag; CameraInfo topics: {infos}")
    return CameraTopics(image=image_topic, image_type=by_topic[image_topic], camera_info=info_topic)


def read_camera_frames(bag: Path | str, topics: CameraTopics | None = None, intrinsics: np.ndarray | None = None,
                       typestore: Any = None, errors: dict[str, int] | None = None, *, image_topic: str | None = None,
                       info_topic: str | None = None, rectify: bool = False) -> Iterator[CameraFrame]:
    """Decode the camera frames of a bag in recording order.

    ``topics``, else ``image_topic`` / ``info_topic`` (None: auto-detected), name the camera. With ``intrinsics``
    (K [3,3]) no CameraInfo is needed; otherwise frames before the first usable CameraInfo are skipped. A frame or
    CameraInfo that cannot be decoded raises ImageError naming topic and time, unless ``errors`` is a dict, in which
    case it is counted there by kind of error (CameraInfo errors as 'CameraInfo <kind>', as the node counts them)
    and skipped: frames keep the last usable CameraInfo. ``rectify``: the images are raw; each is undistorted with its
    CameraInfo (``camera.Rectifier``, as the node's ``rectify``), and one that cannot be raises LensError or is
    counted the same way.
    """
    typestore = typestore or open_typestore()
    with open_reader(bag) as reader:
        if topics is None:
            topics = find_camera_topics(reader.connections, image_topic, info_topic, need_info=intrinsics is None)
        wanted = [c for c in reader.connections if c.topic in (topics.image, topics.camera_info)]
        if reader.message_count == 0:
            raise BagError(f"bag {bag} holds no messages")
        camera_info: CameraModel | None = None
        rectifier = Rectifier()
        for connection, timestamp, raw in reader.messages(connections=wanted):
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            if connection.topic == topics.camera_info:
                try:
                    camera_info = camera_info_to_model(msg)
                except ImageError as exc:
                    if errors is None:
                        raise ImageError(f"{topics.camera_info} at {timestamp} ns: {exc}") from None
                    kind = f"CameraInfo {error_kind(exc)}"
                    errors[kind] = errors.get(kind, 0) + 1
                continue
            try:
                rgb = image_to_rgb(msg) if connection.msgtype == IMAGE_TYPES[0] else compressed_to_rgb(msg)
                height, width = rgb.shape[:2]
                if intrinsics is not None:
                    camera = CameraModel(K=np.asarray(intrinsics, dtype=np.float64), height=height, width=width,
                                         frame_id=msg.header.frame_id)
                elif camera_info is None:
                    continue
                else:
                    camera = camera_info
                if rectify:
                    rgb = rectifier(rgb, camera)
            except (ImageError, LensError) as exc:
                if errors is None:
                    raise type(exc)(f"{topics.image} at {timestamp} ns: {exc}") from None
                kind = error_kind(exc)
                errors[kind] = errors.get(kind, 0) + 1
                continue
            yield CameraFrame(stamp_ns=stamp_to_ns(msg.header.stamp), rgb=rgb, camera=camera,
                              frame_id=msg.header.frame_id, recorded_ns=timestamp)


def read_camera_stamps(bag: Path | str, topics: CameraTopics, need_info: bool = True, typestore: Any = None
                       ) -> np.ndarray:
    """Header stamps (ns) of the frames ``read_camera_frames`` would yield, without decoding any image."""
    typestore = typestore or open_typestore()
    stamps, seen_info = [], not need_info
    with open_reader(bag) as reader:
        wanted = [c for c in reader.connections if c.topic in (topics.image, topics.camera_info)]
        for connection, _, raw in reader.messages(connections=wanted):
            if connection.topic == topics.camera_info:
                seen_info = True
                continue
            if seen_info:
                stamps.append(stamp_to_ns(typestore.deserialize_cdr(raw, connection.msgtype).header.stamp))
    return np.asarray(stamps, dtype=np.int64)


def read_odometry(bag: Path | str, topic: str | None = None, typestore: Any = None
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """All nav_msgs/Odometry poses of a topic: ([N] stamps ns, [N,4,4] T_frame_child, topic).

    Without ``topic`` the only Odometry topic is used, or one whose name contains 'ground_truth'.
    """
    from sfm_ros.geometry import quaternion_to_rotation

    typestore = typestore or open_typestore()
    with open_reader(bag) as reader:
        candidates = sorted({c.topic for c in reader.connections if c.msgtype == ODOMETRY_TYPE})
        if topic is None:
            preferred = [t for t in candidates if "ground_truth" in t]
            pool = preferred or candidates
            if len(pool) != 1:
                raise BagError(f"choose an Odometry topic; candidates: {candidates}")
            topic = pool[0]
        if topic not in candidates:
            raise BagError(f"Odometry topic {topic!r} is not in {bag}; candidates: {candidates}")
        stamps, poses = [], []
        for connection, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic == topic]):
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            T = np.eye(4)
            T[:3, :3] = quaternion_to_rotation(np.array([q.x, q.y, q.z, q.w]))
            T[:3, 3] = (p.x, p.y, p.z)
            stamps.append(stamp_to_ns(msg.header.stamp))
            poses.append(T)
    return np.asarray(stamps, dtype=np.int64), np.asarray(poses).reshape(-1, 4, 4), topic


class BagWriter:
    """Write an MCAP rosbag2 atomically: messages go to a hidden temporary folder renamed on ``close``.

    Use as a context manager; on an exception the temporary folder is removed and ``path`` is untouched.
    Refuses to overwrite an existing bag unless ``overwrite``.
    """

    def __init__(self, path: Path | str, typestore: Any = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise BagError(f"{self.path} exists already, not overwriting (use --overwrite)")
        self.overwrite = overwrite
        self.typestore = typestore or open_typestore()
        self.types = MessageTypes.from_rosbags(self.typestore)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_parent = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._tmp = self._tmp_parent / self.path.name
        self._writer: Any = None
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self._writer = Writer(self._tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        return self

    def write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        """Serialise ``msg`` (its type is taken from the message class) on ``topic`` at ``stamp_ns``."""
        msgtype = msg.__msgtype__
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = connection
        self._writer.write(connection, int(stamp_ns), self.typestore.serialize_cdr(msg, msgtype))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._writer.close()
                if self.path.exists() and self.overwrite:
                    shutil.rmtree(self.path)
                self._tmp.rename(self.path)
        finally:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)


def kitti_to_bag(sequence: Any, out: Path | str, *, compressed: bool = False, ground_truth: np.ndarray | None = None,
                 camera_frame: str = "camera_optical_frame", image_topic: str = "/camera/image_raw",
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Write a KITTI sequence (``sfm_ros.kitti.Sequence``) as an MCAP bag.

    Topics: ``/camera/image_raw`` (rgb8) or ``.../compressed`` (JPEG), ``/camera/camera_info``, and when ground
    truth exists (``ground_truth`` [N,4,4] T_world_camera, or ``sequence.poses``) ``/ground_truth/odom``
    (nav_msgs/Odometry of the camera in 'world') with matching ``/tf``; ``/tf_static`` holds base_link ->
    camera (REP 103 optical axes at the origin).
    """
    import cv2
    from tqdm import tqdm

    from sfm_ros.kitti import load_rgb

    poses = ground_truth if ground_truth is not None else sequence.poses
    with BagWriter(out, overwrite=overwrite) as writer:
        types = writer.types
        T_base_camera = np.eye(4)
        T_base_camera[:3, :3] = R_BASE_OPTICAL
        first = int(sequence.stamps_ns[0])
        writer.write("/tf_static", types.TFMessage(transforms=[make_transform(
            types, make_header(types, first, "base_link"), camera_frame, T_base_camera)]), first)
        height, width = sequence.size
        camera = CameraModel(K=sequence.K, height=height, width=width, frame_id=camera_frame)
        frames = tqdm(range(len(sequence)), desc=f"kitti-to-bag {sequence.name}", disable=not progress, unit="frame")
        for i in frames:
            stamp = int(sequence.stamps_ns[i])
            header = make_header(types, stamp, camera_frame)
            rgb = load_rgb(sequence.image_paths[i])
            # CameraInfo first, so a reader meets the intrinsics before the frame they describe.
            writer.write("/camera/camera_info", make_camera_info(types, camera, header), stamp)
            if compressed:
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise BagError(f"JPEG encoding failed for {sequence.image_paths[i]}")
                msg = writer.typestore.types["sensor_msgs/msg/CompressedImage"](
                    header=header, format="rgb8; jpeg compressed bgr8", data=jpeg.reshape(-1))
                writer.write(f"{image_topic}/compressed", msg, stamp)
            else:
                writer.write(image_topic, rgb_to_image_msg(types, rgb, header), stamp)
            if poses is not None:
                gt_header = make_header(types, stamp, "world")
                covariance = np.zeros((6, 6))
                writer.write("/ground_truth/odom", make_odometry(types, gt_header, "camera_ground_truth", poses[i],
                                                                 covariance), stamp)
                writer.write("/tf", types.TFMessage(transforms=[make_transform(
                    types, gt_header, "camera_ground_truth", poses[i])]), stamp)
    return Path(out)
