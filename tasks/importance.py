"""FeatureImportanceTask: the inputs of a trained model ranked by permutation importance."""

from __future__ import annotations

import luigi

from bhive import training
from bhive.config import GROUP_KEYS, ConfigError
from bhive.evaluation import importance
from tasks.evaluation import ScoringTask
from tasks.parameters import attack_of


class FeatureImportanceTask(ScoringTask):
    """AUC lost per discriminator when each input feature, and each whole input group, is
    shuffled across the test jets (bhive.evaluation.importance), with the spread of
    --repeats shuffles as its uncertainty, and the --top features of each group as a
    reduced config snippet (``reduced_features.yml``)."""

    repeats = luigi.IntParameter(default=5, description="shuffles per feature, each with its own seed; their "
                                 "standard deviation is the uncertainty; default: 5")
    max_jets = luigi.IntParameter(default=50_000, description="test jets used, a seeded random subset; default: 50000")
    top = luigi.IntParameter(default=10, description="features per group in the plots and in reduced_features.yml; "
                             "default: 10")

    # the feature keys name the reduced snippet's keys and contents; pt_key and eta_key stay in it
    config_keys = ("classes", "dataloader", "discriminators", "pt_key", "eta_key", "global_features",
                   "global_custom_features", *(key for keys in GROUP_KEYS.values() for key in keys[::2]))

    def requires(self):
        if attack_of(self, "test_attack").active:
            raise ConfigError("FeatureImportanceTask ranks the inputs of nominal test jets; drop --test-attack")
        return self.scored_inputs()

    def identity_settings(self) -> dict:
        return {"repeats": self.repeats, "max_jets": self.max_jets, "top": self.top,
                "allow_validation_on_test": self.allow_validation_on_test}

    def output(self):
        return {name: self.local_target(file) for name, file in
                (("json", importance.IMPORTANCE), ("csv", importance.TABLE), ("yaml", importance.REDUCED))}

    def run(self):
        self.check_test_dataset()
        importance.write_feature_importance(self.cfg, self.training().local_path(training.ARTIFACT),
                                            self.requires()["test"].output_directory(), self.local_path(),
                                            self.repeats, self.max_jets, self.top, self.seed)
