"""scikit-learn's bundled 8x8 handwritten digits: the offline data set that needs no files.

1,797 grey-scale images with values 0..16 and labels 0..9. The train/test split is
stratified and fixed (``random_state=0``), independent of the job seed, so that every job
with the same ``test_fraction`` evaluates on the same test images.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from btard_ray.data.dataset import ImageDataset

#: The split's seed. Fixed on purpose: the split is part of the data set, not of the run.
SPLIT_RANDOM_STATE = 0
#: The digits' pixel range is 0..16; this maps it to [0, 1] before normalisation.
PIXEL_MAX = 16


def load_digits_dataset(test_fraction: float = 0.25) -> ImageDataset:
    """The digits as an :class:`ImageDataset` of shape (1, 8, 8) with 10 classes.

    ``test_fraction`` of the images (stratified by label) form the test split. Pixels are
    scaled to [0, 1] and normalised with the training split's mean and std.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    bunch = _sklearn_digits()
    # The bundled values are small integers stored as float64; uint8 is exact and compact.
    images = bunch.images.astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=SPLIT_RANDOM_STATE
    )
    return ImageDataset(
        name="digits",
        train_images=x_train,
        train_labels=y_train,
        test_images=x_test,
        test_labels=y_test,
        scale=1.0 / PIXEL_MAX,
        num_classes=10,
    )
