"""
One camera of the perception node: its topics, newest frame, depth images, outputs, counters.

The node has one CameraStream per name in its cameras parameter, or a single one named '' when
that is empty: the unnamed camera's topics are the node's own (image, detections, ...), as a
one-camera node always had; camera N's are N/image, N/detections, ... The node's callbacks and
stream thread do the work; a CameraStream holds what they keep per camera.
"""

import threading
import time
from typing import Any, Optional

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from vlm_perception import msg
from vlm_perception.core.depth import DepthImage, PinholeCamera, place_all, StampedBuffer
from vlm_perception.core.types import Detection
from vlm_perception.ros import conversions
from vlm_perception.ros.diagnostics import PerceptionStats
from vlm_perception.ros.stream import LatestSlot, Periodic, SourceFrame

DEPTH_SPAN_S, DEPTH_IMAGES = 1.0, 30   # depth images kept for pairing
MIN_MARKER_LIFETIME_S = 0.5
MIN_STARVED_PERIOD_S = 0.5  # 'no image' on scene_text at most this often


class CameraStream:
    """
    One camera: subscriptions, newest frame, depth images and intrinsics, outputs, counters.

    Its outputs are lifecycle publishers (they publish only while the node is active). Frames
    and depth images are guarded by one lock, as the image and depth callbacks pair them from
    either side.
    """

    def __init__(self, node: LifecycleNode, name: str, stats: PerceptionStats,
                 use_depth: bool, scene_period: float) -> None:
        """Make the camera's publishers on node; its subscriptions come with activate."""
        self.name = name
        self.stats = stats
        self.use_depth = use_depth
        self.slot: LatestSlot[SourceFrame] = LatestSlot()  # the stream's next frame
        # A group per camera: one camera's image callback held during inference holds no other.
        self.input_group = MutuallyExclusiveCallbackGroup()
        self.subscriptions: list[Any] = []  # the image (or compressed) one first
        self.intrinsics: Optional[PinholeCamera] = None
        self.scene_due = Periodic(scene_period)
        self.starved_text = Periodic(max(scene_period, MIN_STARVED_PERIOD_S))
        self.caption = ''
        self._last_processed: Optional[float] = None
        self._marker_lifetime = MIN_MARKER_LIFETIME_S
        self._lock = threading.Lock()
        self.forget()

        output = node.create_lifecycle_publisher
        self.detections_pub = output(msg.DetectionArray, self.topic('detections'), 10)
        self.detections_2d_pub = (
            output(conversions.Detection2DArray, self.topic('detections_2d'), 10)
            if conversions.Detection2DArray is not None else None)
        self.detections_3d_pub = (
            output(conversions.Detection3DArray, self.topic('detections_3d'), 10)
            if conversions.Detection3DArray is not None and use_depth else None)
        # Transient local: a planner that starts later gets the latest scene at once.
        self.scene_pub = output(msg.SceneDescription, self.topic('scene'), QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.scene_text_pub = output(String, self.topic('scene_text'), 10)
        self.annotated_pub = output(Image, self.topic('image_annotated'), 1)
        self.markers_pub = output(MarkerArray, self.topic('markers'), 10)

    def topic(self, name: str) -> str:
        """Return the camera's relative name of a topic: name, or N/name for camera N."""
        return f'{self.name}/{name}' if self.name else name

    @property
    def label(self) -> str:
        """Return how logs name the camera: 'camera N', or 'the camera' when unnamed."""
        return f'camera {self.name}' if self.name else 'the camera'

    def forget(self) -> None:
        """Drop every kept frame and depth image (the intrinsics stay)."""
        with self._lock:
            self._depth_images: StampedBuffer[DepthImage] = StampedBuffer(DEPTH_SPAN_S,
                                                                          DEPTH_IMAGES)
            self._latest: Optional[SourceFrame] = None
            self._latest_paired: Optional[SourceFrame] = None  # the newest with a depth image
            self._latest_good: Optional[SourceFrame] = None  # the newest whose pixels decoded

    def latest(self) -> tuple[Optional[SourceFrame], Optional[SourceFrame]]:
        """Return the newest frame and the newest one paired with a depth image."""
        with self._lock:
            return self._latest, self._latest_paired

    def latest_good(self) -> Optional[SourceFrame]:
        """Return the newest frame whose pixels decoded."""
        with self._lock:
            return self._latest_good

    def usable(self, frame: SourceFrame) -> bool:
        """Decode frame if not tried yet; remember it as the newest usable one if it decoded."""
        if not frame.decoded():
            return False
        with self._lock:
            if self._latest_good is None or frame.stamp_ns >= self._latest_good.stamp_ns:
                self._latest_good = frame
        return True

    def keep(self, frame: SourceFrame, depth_slop: float) -> None:
        """Make frame the newest (for queries), paired with a depth image within depth_slop."""
        with self._lock:
            self._latest = frame
            if self.use_depth:
                depth_stamp = self._depth_images.nearest_stamp(frame.stamp_ns, depth_slop)
                if depth_stamp is not None:
                    self._mark_paired(frame, depth_stamp, depth_slop)

    def add_depth(self, stamp_ns: int, depth: DepthImage, depth_slop: float) -> None:
        """Keep a depth image; the newest frame pairs with it when within depth_slop."""
        with self._lock:  # against the image callback, which pairs the other way
            self._depth_images.add(stamp_ns, depth)
            self._mark_paired(self._latest, stamp_ns, depth_slop)

    def _mark_paired(self, frame: Optional[SourceFrame], depth_stamp_ns: int,
                     depth_slop: float) -> None:
        """Remember frame as the newest with a depth image, if depth_stamp_ns pairs with it."""
        if frame is not None and abs(frame.stamp_ns - depth_stamp_ns) <= depth_slop * 1e9:
            if self._latest_paired is None or frame.stamp_ns >= self._latest_paired.stamp_ns:
                self._latest_paired = frame  # the caller holds the lock

    def placed(self, frame: SourceFrame, detections: list[Detection],
               depth: dict[str, Any]) -> tuple[list[Detection], str]:
        """Return the detections placed with the depth paired with frame, and why not if not."""
        if not self.use_depth:
            return detections, 'depth off: the node runs with use_depth false'
        camera = self.intrinsics
        if camera is None:
            return detections, 'no depth: no valid camera_info received yet'
        image = self._depth_images.nearest(frame.stamp_ns, depth['depth_slop'])
        if image is None:
            return detections, (f'no depth: no depth image within depth_slop '
                                f'({depth["depth_slop"]:g} s) of the image')
        height, width = frame.size
        return place_all(detections, image, camera, width, height, depth['min_depth'],
                         depth['max_depth']), ''

    def marker_lifetime(self) -> float:
        """Return how long this frame's markers live: past the gap to the next processed one."""
        now = time.monotonic()
        if self._last_processed is not None:
            self._marker_lifetime = max(MIN_MARKER_LIFETIME_S, 2 * (now - self._last_processed))
        self._last_processed = now
        return self._marker_lifetime
