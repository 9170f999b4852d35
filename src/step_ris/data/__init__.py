"""Data layer: image decoding, letterboxing, the REFER layout reader and the torch dataset."""

from .dataset import ReferDataset, build_vocab, collate
from .image_io import DEFAULT_MAX_PIXELS, ImageError, load_image
from .refer import (
    DATASETS,
    DOWNLOADS,
    DataError,
    DatasetSpec,
    ReferData,
    check_dataset,
    dataset_names,
    get_spec,
    load_refs,
    parse_dataset_name,
)
from .transforms import IMAGENET_MEAN, IMAGENET_STD, letterbox_image, letterbox_mask, unletterbox, valid_extent

__all__ = [
    "DATASETS",
    "DEFAULT_MAX_PIXELS",
    "DOWNLOADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "DatasetSpec",
    "ImageError",
    "ReferData",
    "ReferDataset",
    "build_vocab",
    "check_dataset",
    "collate",
    "dataset_names",
    "get_spec",
    "letterbox_image",
    "letterbox_mask",
    "load_image",
    "load_refs",
    "parse_dataset_name",
    "unletterbox",
    "valid_extent",
]
