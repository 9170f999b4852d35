"""Data layer: image decoding, letterboxing, the dataset registry, the REFER layout reader, the torch dataset."""

from .check import check_dataset
from .dataset import ReferDataset, build_vocab, collate
from .errors import DataError
from .image_io import DEFAULT_MAX_PIXELS, ImageError, load_image
from .refer import ReferData, load_refs
from .registry import DATASETS, DOWNLOADS, DatasetSpec, dataset_names, get_spec, parse_dataset_name
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
