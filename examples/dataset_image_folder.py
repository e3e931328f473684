"""A dataset read from a folder of images: <data.path>/train/<class>/*.png and
<data.path>/test/<class>/*.png, one sub-folder per class (the sorted names of train's sub-folders
are the labels 0, 1, ...), read as 8-bit grayscale.

    ffrun plugins=[dataset_image_folder] data=image_folder data.path=<folder> debug=tiny
"""
from pathlib import Path

import numpy as np
from PIL import Image

from ffrun.api import DATASETS, DataError, DataPeek, Dataset


@DATASETS.register()
class ImageFolder(Dataset):
    name = "image_folder"
    defaults = {"val_size": 10}        # what data=image_folder sets beside name (data.<key>=... overrides)

    def load(self, path, num_classes):
        classes = self._classes(path)
        return (*self._read(Path(path) / "train", classes), *self._read(Path(path) / "test", classes))

    def peek(self, path, available):   # before the run: the image shape, so the network's shapes are checked
        self._classes(path)
        files = sorted((Path(path) / "train").glob("*/*.png"))
        with Image.open(files[0]) as first:
            return DataPeek(str(path), (first.height, first.width, 1), len(files))

    def _classes(self, path):
        train = Path(path or "") / "train"
        classes = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        if not classes or not any(train.glob("*/*.png")):
            raise DataError(f"data.path={path}: expected train/<class>/*.png and test/<class>/*.png images")
        return classes

    def _read(self, folder, classes):
        unknown = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes)) if folder.is_dir() else []
        files = [(f, label) for label, name in enumerate(classes) for f in sorted((folder / name).glob("*.png"))]
        if unknown or not files:
            raise DataError(f"{folder}: {'classes ' + str(unknown) + ' are not in train/' if unknown else 'no images'}")
        # a fixed mix: validation takes the last data.val_size training images, which must not all be one class
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
        images = np.stack([np.asarray(Image.open(f).convert("L")) for f, _ in files])
        return images, np.array([label for _, label in files])
