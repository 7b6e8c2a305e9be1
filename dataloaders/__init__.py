"""Dataloader plugins: dataset shards to model batches.

``dataloaders.base`` holds the base class; ``dataloader:`` in the config picks one.
Importing this package registers the shipped loaders.
"""

from dataloaders.resident import DeviceResidentLoader  # noqa: F401
from dataloaders.shards import ShardDataLoader  # noqa: F401
