"""Performance of a tagger on scored jets, one module per output:

- :mod:`~bhive.evaluation.scores`: which discriminators, which selections of jets;
- :mod:`~bhive.evaluation.curves`: ROC curves and AUCs per discriminator and selection;
- :mod:`~bhive.evaluation.working_points`: thresholds at target mis-ids, efficiencies vs pt and eta;
- :mod:`~bhive.evaluation.distributions`: score distributions, the confusion matrix, input features;
- :mod:`~bhive.evaluation.comparison`: several trainings and reference taggers on one test dataset;
- :mod:`~bhive.evaluation.summary`: ``summary.json`` and ``summary.md``.
- :mod:`~bhive.evaluation.importance`: the inputs ranked by permutation importance, with
  :mod:`~bhive.evaluation.reduced_features`, their top features as config keys.

Each ``write_*`` function is what one evaluation task runs: arrays in, files out.
"""
