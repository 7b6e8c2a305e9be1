"""The built-in simulated jet sample: Pythia 8 events, anti-kt jets with ghost-associated
flavour labels, a parametrised detector response, and DeepNtuple-style ROOT TTrees.

Modules, in the order data flows through them: ``generator`` (Pythia set-up), ``jets``
(clustering and truth labels), ``detector`` (tracks, neutrals, secondary vertices),
``ntuple`` (branch names and TTree writing), ``production`` (files and seeds) and
``sample`` (a finished split on disk).
"""
