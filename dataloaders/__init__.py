"""Dataloader plugins of b-hive.

``dataloaders.base`` holds the abstract base class; a plugin turns a dataset directory into
the training, validation and inference iterables a given model consumes.
"""
