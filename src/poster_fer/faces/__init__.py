"""Face pipeline ahead of the model: load an image, find faces, align each to a dataset's crop geometry.

Typical use::

    rgb = load_image("photo.jpg")
    detector = build_detector("yunet")          # downloads the model into the cache on first use
    for face in detector.detect(rgb):
        crop = align_face(rgb, face.landmarks, "rafdb")
"""

from .align import (
    ARCFACE_112_TEMPLATE,
    GEOMETRIES,
    CropGeometry,
    align_face,
    alignment_matrix,
    available_geometries,
    estimate_similarity,
    geometry_from_landmarks,
    get_geometry,
    template_from_arcface,
    transform_points,
)
from .detect import (
    HAAR_LANDMARK_RATIOS,
    LANDMARK_NAMES,
    Face,
    FaceDetector,
    HaarDetector,
    YuNetDetector,
    build_detector,
)
from .download import (
    YUNET_FILENAME,
    YUNET_SHA256,
    YUNET_URL,
    DetectorError,
    DetectorModelError,
    default_cache_dir,
    download_file,
    resolve_yunet_model,
)
from .io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, to_rgb_array

__all__ = [
    "ARCFACE_112_TEMPLATE",
    "DEFAULT_MAX_PIXELS",
    "GEOMETRIES",
    "HAAR_LANDMARK_RATIOS",
    "LANDMARK_NAMES",
    "YUNET_FILENAME",
    "YUNET_SHA256",
    "YUNET_URL",
    "CropGeometry",
    "DetectorError",
    "DetectorModelError",
    "Face",
    "FaceDetector",
    "HaarDetector",
    "ImageLoadError",
    "YuNetDetector",
    "align_face",
    "alignment_matrix",
    "available_geometries",
    "build_detector",
    "default_cache_dir",
    "download_file",
    "estimate_similarity",
    "geometry_from_landmarks",
    "get_geometry",
    "load_image",
    "resolve_yunet_model",
    "template_from_arcface",
    "to_rgb_array",
    "transform_points",
]
