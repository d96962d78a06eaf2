"""Datasets (RAF-DB, FER2013, FER+, AffectNet, folder, CSV) and the official POSTER transforms.

Every dataset carries ``classes``, ``targets`` and a load ``report``, validates its files when built
(raising :class:`DatasetError` naming file and line, or skipping and counting with ``on_error="skip"``)
and hands PIL RGB images to its transform. Start from :func:`build_dataset` and :func:`build_transform`.
"""

from .affectnet import AFFECTNET7_CLASSES, AFFECTNET8_CLASSES, AffectNetCsvDataset, AffectNetListDataset
from .base import FERDataset, ImageFileDataset, normalize_split
from .errors import DatasetError, LoadReport, MissingSplitError
from .factory import DATASET_KINDS, DatasetSubset, build_dataset, class_balanced_sampler, holdout_split
from .fer2013 import FER2013_CLASSES, Fer2013Dataset, Fer2013Table, load_fer2013_table
from .ferplus import (
    FERPLUS_CLASSES,
    FERPLUS_LABEL_MODES,
    FerPlusDataset,
    ferplus_majority,
    ferplus_target,
    load_ferplus_votes,
)
from .generic import CsvManifestDataset, ImageFolderDataset
from .rafdb import RAFDB_CLASSES, RafDbDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TRANSFORM_NAMES, build_transform

__all__ = [
    "AFFECTNET7_CLASSES",
    "AFFECTNET8_CLASSES",
    "DATASET_KINDS",
    "FER2013_CLASSES",
    "FERPLUS_CLASSES",
    "FERPLUS_LABEL_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RAFDB_CLASSES",
    "TRANSFORM_NAMES",
    "AffectNetCsvDataset",
    "AffectNetListDataset",
    "CsvManifestDataset",
    "DatasetError",
    "MissingSplitError",
    "DatasetSubset",
    "FERDataset",
    "Fer2013Dataset",
    "Fer2013Table",
    "FerPlusDataset",
    "ImageFileDataset",
    "ImageFolderDataset",
    "LoadReport",
    "RafDbDataset",
    "build_dataset",
    "build_transform",
    "class_balanced_sampler",
    "ferplus_majority",
    "ferplus_target",
    "holdout_split",
    "load_fer2013_table",
    "load_ferplus_votes",
    "normalize_split",
]
