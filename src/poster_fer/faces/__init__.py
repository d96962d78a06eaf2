"""Face pipeline ahead of the model: load an image, find faces, align each to a dataset's crop geometry.

Typical use::

    rgb = load_image("photo.jpg")
    detector = build_detector("yunet")          # the YuNet model bundled with the package; no download
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
    drop_invalid_faces,
    invalid_face_reason,
)
from .download import (
    BUNDLED_YUNET_FILENAME,
    BUNDLED_YUNET_SHA256,
    YUNET_BUNDLED,
    YUNET_FILENAME,
    YUNET_SHA256,
    YUNET_URL,
    YUNET_ZOO,
    DetectorError,
    DetectorModelError,
    bundled_yunet_path,
    default_cache_dir,
    download_file,
    resolve_yunet_model,
    yunet_model_path,
)
from .io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, to_rgb_array

__all__ = [
    "ARCFACE_112_TEMPLATE",
    "BUNDLED_YUNET_FILENAME",
    "BUNDLED_YUNET_SHA256",
    "DEFAULT_MAX_PIXELS",
    "GEOMETRIES",
    "HAAR_LANDMARK_RATIOS",
    "LANDMARK_NAMES",
    "YUNET_BUNDLED",
    "YUNET_FILENAME",
    "YUNET_SHA256",
    "YUNET_URL",
    "YUNET_ZOO",
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
    "bundled_yunet_path",
    "default_cache_dir",
    "download_file",
    "drop_invalid_faces",
    "estimate_similarity",
    "geometry_from_landmarks",
    "get_geometry",
    "invalid_face_reason",
    "load_image",
    "resolve_yunet_model",
    "template_from_arcface",
    "to_rgb_array",
    "transform_points",
    "yunet_model_path",
]
