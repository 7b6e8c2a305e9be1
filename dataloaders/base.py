"""What a dataloader plugin builds on, re-exported from :mod:`bhive.plugins.dataloader`.

A dataloader turns a dataset directory (shards + ``meta.json``) into the batches a model
consumes; a new one subclasses :class:`DataLoaderPlugin` and is chosen by ``dataloader:``
in the config.
"""

from bhive.plugins.dataloader import (  # noqa: F401
    LOADERS, Batch, DataLoaderPlugin, LoaderSettings, RankShare, dataloader_class, rank_rows,
)
from bhive.truth import label_map  # noqa: F401
