"""coffea processors of b-hive: ROOT ntuples to the dataset arrays.

``processors.base`` holds the base processor; one subclass per ntuple flavour, chosen by the
config's ``processor:`` key.
"""
