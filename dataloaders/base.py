"""What a dataloader plugin builds on, re-exported from :mod:`bhive.plugins.dataloader`.

A dataloader turns a dataset directory (shards + ``meta.json``) into the batches a model
consumes; a new one subclasses :class:`DataLoaderPlugin` and is chosen by ``dataloader:``
in the config.
"""

from bhive.plugins.dataloader import LOADERS, Batch, DataLoaderPlugin, LoaderSettings, dataloader_class  # noqa: F401
from bhive.truth import label_map  # noqa: F401
