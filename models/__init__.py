"""Model plugins of b-hive.

One module per model family; ``models.base`` holds the abstract base classes a model
subclasses. The config's ``model:`` key (or ``--model-name``) picks a model by class name.
"""
