"""
Which topics a bag run reads and writes, from a recording's topics and the user's choices.

The image topic is given, or the recording's only image topic (sensor_msgs/Image or
CompressedImage, depth topics aside); a topic given as ``/cam/image`` is read from
``/cam/image/compressed`` (image_transport's name) where only that is recorded. Depth and
camera_info default to the image topic's siblings (``/cam/depth``, ``/cam/camera_info``) where
recorded; outputs go under the image topic's parent (``/cam/detections``, ...) unless
``out_namespace`` says otherwise.
"""

from dataclasses import dataclass
from typing import Mapping, Optional

from vlm_perception.core.errors import InputError

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
IMAGE_TYPES = (IMAGE, COMPRESSED)
COMPRESSED_SUFFIX = '/compressed'
OUTPUTS = ('detections', 'scene', 'scene_text', 'detections_3d')


@dataclass(frozen=True)
class Topics:
    """The topics of one run: image (read), depth and camera_info ('' = none), output namespace."""

    image: str
    compressed: bool
    depth: str
    camera_info: str
    namespace: str  # '' for the root; no trailing slash

    def output(self, name: str) -> str:
        """Return the full name of an output topic (detections, scene, ...)."""
        return f'{self.namespace}/{name}'


def full_name(topic: str) -> str:
    """Return a topic name with one leading slash and no trailing one."""
    return '/' + topic.strip().strip('/')


def parent(topic: str) -> str:
    """Return a topic's namespace: '/cam' of '/cam/image', '' of '/image'."""
    return topic.rsplit('/', 1)[0]


def base_image_topic(topic: str, compressed: bool) -> str:
    """Return the image topic a compressed one belongs to ('/cam/image' of its /compressed)."""
    if compressed and topic.endswith(COMPRESSED_SUFFIX):
        return topic[:-len(COMPRESSED_SUFFIX)]
    return topic


def _listing(topics: Mapping[str, str], types: tuple[str, ...]) -> str:
    found = [f'{name} ({kind.rsplit("/", 1)[-1]})' for name, kind in sorted(topics.items())
             if kind in types]
    return ', '.join(found) if found else 'none'


def _is_depth(topic: str) -> bool:
    return any('depth' in part for part in topic.lower().split('/'))


def _image_topic(topics: Mapping[str, str], wanted: Optional[str], where: str) -> str:
    if wanted is not None:
        wanted = full_name(wanted)
        for name in (wanted, wanted + COMPRESSED_SUFFIX):
            if topics.get(name) in IMAGE_TYPES:
                return name
        raise InputError(f"no image topic '{wanted}' in {where}; its image topics: "
                         f'{_listing(topics, IMAGE_TYPES)}')
    candidates = {base_image_topic(name, kind == COMPRESSED): name
                  for name, kind in sorted(topics.items(), reverse=True)
                  if kind in IMAGE_TYPES and not _is_depth(name)}  # raw wins over its /compressed
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if not candidates:
        raise InputError(f'no image topic in {where} (sensor_msgs/Image or CompressedImage); '
                         f'its topics: {", ".join(sorted(topics)) or "none"}')
    raise InputError(f'{where} has several image topics ({_listing(topics, IMAGE_TYPES)}): '
                     'choose one with --image-topic')


def _sibling(topics: Mapping[str, str], given: Optional[str], default: str, kind: str,
             what: str, where: str) -> str:
    """Return a given topic (checked), '' for '', else default where recorded with kind."""
    if given is None:
        return default if topics.get(default) == kind else ''
    if not given.strip():
        return ''
    given = full_name(given)
    if topics.get(given) != kind:
        recorded = topics.get(given)
        reason = f'it is {recorded}' if recorded else 'it is not recorded'
        raise InputError(f"{what} topic '{given}' is not a {kind} topic of {where} ({reason}; "
                         f'its {kind.rsplit("/", 1)[-1]} topics: {_listing(topics, (kind,))})')
    return given


def resolve(topics: Mapping[str, str], where: str, image_topic: Optional[str] = None,
            depth_topic: Optional[str] = None, camera_info_topic: Optional[str] = None,
            out_namespace: Optional[str] = None) -> Topics:
    """
    Return the run's topics from the recording's (name -> type); InputError naming the choices.

    ``where`` names the recording in messages. None means the default; an empty depth or
    camera_info topic means none.
    """
    image = _image_topic(topics, image_topic, where)
    compressed = topics[image] == COMPRESSED
    namespace = parent(base_image_topic(image, compressed))
    depth = _sibling(topics, depth_topic, f'{namespace}/depth', IMAGE, 'depth', where)
    info = _sibling(topics, camera_info_topic, f'{namespace}/camera_info', CAMERA_INFO,
                    'camera_info', where)
    if depth and depth == image:
        raise InputError(f"the depth topic '{depth}' is the image topic")
    if out_namespace is not None:
        namespace = '' if not out_namespace.strip().strip('/') else full_name(out_namespace)
    return Topics(image, compressed, depth, info, namespace)
