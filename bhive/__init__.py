"""b-hive: the library shared by b-hive's tasks and plugins.

Configuration, store paths, dataset format, truth rules, reweighting, the simulated
default sample and, later, training and evaluation numerics live here. Nothing in
``bhive`` imports ``tasks``.
"""

__version__ = "0.1.0"
