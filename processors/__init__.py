"""coffea processors of b-hive: ROOT ntuples to dataset pieces.

``processors.base`` holds the base class; one subclass per ntuple flavour, chosen by the
config's ``processor:`` key. Importing this package registers the shipped processors.
"""

from processors.deepntuple import DeepNtupleProcessor  # noqa: F401
from processors.nanoaod import NanoAODProcessor  # noqa: F401
