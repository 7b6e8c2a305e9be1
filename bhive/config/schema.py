"""The schema of configs/*.yml: every key, its type and allowed values, and its meaning.

A config is configs/NAME.yml layered over configs/default.yml; :class:`ConfigFile` validates the
layered mapping. The models declare no defaults (default.yml is the one place they live), except
for the optional settings of an entry the user names (a process, a simulated process), which no
default file can reach. Rules that tie keys together are the model validators of ConfigFile.

``configs/schema.json`` is generated from these models as an overlay: a config as written, in
which nothing is required (:func:`schema_json`).
"""

from __future__ import annotations

import functools
import json
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, create_model, model_validator
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticUndefined

from bhive import expressions
from bhive.config.search import Space, check_training_values
from bhive.config.values import (EMPTY_IF_NULL, EMPTY_LIST_IF_NULL, Bool, Cuts, Edges, Expression, Expressions, Integer,
                                 ModuleName, Name, Names, NonEmpty, Number, ProcessName, Text, Truths, fail, suggest,
                                 truth_rules)

SCHEMA_COMMAND = "python -m bhive.config --schema > configs/schema.json"
CANDIDATE_GROUPS = ("cpf", "npf", "vtx")
# a group's keys: its feature branches, its candidate count and its custom features
GROUP_KEYS = {group: (features, f"n_{group}_candidates", f"{group}_custom_features")
              for group, features in zip(CANDIDATE_GROUPS, ("cpf_candidates", "npf_candidates", "vtx_features"))}
#: what ranks the trials of a search, and the direction that finds the best model
METRIC_DIRECTIONS = {"val_loss": "minimize", "val_accuracy": "maximize"}
_EXPRESSIONS = "{name: expression} over input branches with allow-listed numpy (np) and awkward (ak) functions, " \
               "e.g. {log_pt: 'np.log(jet_pt)'} (README: Custom features)"


class Section(BaseModel):
    """A mapping of config keys: frozen, and an unknown key is an error with a did-you-mean."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # pydantic's own extra_forbidden error names neither the allowed keys nor a close match
        if not isinstance(data, dict):
            return data
        for key in data:
            if key not in cls.model_fields:
                fail("", key, kind="unknown_key", allowed=tuple(cls.model_fields))
        # an optional setting of a named entry (mpi, cuts, ...) set to null takes its default
        return {key: value for key, value in data.items() if value is not None or cls.model_fields[key].default in (
            None, PydanticUndefined)}


class SamplesConfig(Section):
    """Input ntuples: file paths, globs or root:// URLs for the train and test splits."""

    train: Names("file paths, globs or root:// URLs") = Field(description="files of the training split")
    test: Names("file paths, globs or root:// URLs") = Field(description="files of the test split")


class SimulatedProcessSection(Section):
    """A process of the built-in simulation (Pythia 8), under simulate.processes.NAME."""

    kind: Text("ttbar", "qcd", what="process kind") = Field(description="what is generated: ttbar | qcd")
    train_jets: Integer(0, "a number of jets >= 0") = Field(description="jets generated for the training split")
    test_jets: Integer(0, "a number of jets >= 0") = Field(description="jets generated for the test split")
    mpi: Bool = Field(True, description="multiple parton interactions (underlying event)")
    pthat_min: Optional[Number("a pT-hat threshold in GeV > 0", gt=0)] = Field(
        None, description="minimum pT-hat of the hard scattering in GeV; required for qcd")
    pthat_bias_power: Optional[Number("a bias power > 0 (omit for no bias)", gt=0)] = Field(
        None, description="generate with weight pT-hat^power to populate high pT; null: no bias")
    pythia_settings: Names("Pythia settings ('Key = value')", allow_empty=True) = Field(
        (), description="extra Pythia settings, e.g. ['PartonLevel:ISR = off']")

    @model_validator(mode="after")
    def _generates_jets(self) -> SimulatedProcessSection:
        if self.train_jets == 0 and self.test_jets == 0:
            fail("train_jets and test_jets are both 0; request jets for at least one split or remove the process")
        if self.kind == "qcd" and self.pthat_min is None:
            fail("a qcd process needs a positive pthat_min (GeV), e.g. 'pthat_min: 30.0'", "pthat_min")
        return self


class SimulateSection(Section):
    """Built-in generation of the inputs, instead of recorded ntuples (samples)."""

    branch_style: Text("hlt", "deepjet", what="branch_style") = Field(
        description="branch names to write: hlt (pfcand_*) | deepjet (Cpfcan_*, Npfcan_*)")
    ecm_gev: Number("an energy in GeV > 0", gt=0) = Field(description="proton-proton centre-of-mass energy (GeV)")
    jets_per_file: Integer(1) = Field(description="jets per generated file")
    jet_pt_min: Number("a pT in GeV >= 0", ge=0) = Field(description="generator-level jet pT threshold (GeV)")
    jet_abs_eta_max: Number("a number > 0", gt=0) = Field(description="generator-level jet |eta| limit")
    npv_mean: Number("a number >= 0", ge=0) = Field(description="mean number of primary vertices (pileup)")
    processes: Annotated[dict[ProcessName, SimulatedProcessSection], NonEmpty(
        dict, "a mapping name -> process settings",
        "no processes; add e.g. 'ttbar: {kind: ttbar, train_jets: 60000, test_jets: 20000}'")] = Field(
        description="processes by name (letters and digits: files are named <name>_<split>_<index>.root)")


class ProcessConfig(Section):
    """A physics process: which input files belong to it and its evaluation cuts."""

    name: Name = Field(description="process name, unique")
    match: Names("file path patterns (fnmatch)") = Field(
        description="fnmatch patterns on the file path; the first process matching a file wins")
    cuts: Cuts = Field({}, description="evaluation cuts {pt | eta | abs_eta: [lo, hi]}, [lo, hi); .inf: no upper edge")


def _unique_processes(processes: tuple[ProcessConfig, ...]) -> tuple[ProcessConfig, ...]:
    for index, process in enumerate(processes):
        if process.name in (earlier.name for earlier in processes[:index]):
            fail(f"process name {process.name!r} is used twice; process names must be unique", index, "name")
    return processes


class Discriminator(Section):
    """Signal and background output classes of a score like BvsL = b / (b + uds + g)."""

    signal: Names("output classes") = Field(description="output classes of the numerator")
    background: Names("output classes") = Field(description="output classes added to the signal below the line")

    @model_validator(mode="after")
    def _sides_differ(self) -> Discriminator:
        both = [name for name in self.signal if name in self.background]
        if both:
            fail(f"class(es) {', '.join(map(repr, both))} are on both the signal and the background side")
        return self


class TrainingConfig(Section):
    """Training defaults; task parameters may override them per run."""

    epochs: Integer(1) = Field(description="passes over the training set")
    batch_size: Integer(1) = Field(description="jets per optimisation step")
    learning_rate: Number("a number > 0", gt=0) = Field(description="peak learning rate")
    weight_decay: Number("a number >= 0", ge=0) = Field(
        description="decoupled weight decay for adamw, L2 penalty otherwise")
    optimizer: Text("adamw", "adam", "sgd", what="optimizer") = Field(description="adamw | adam | sgd")
    scheduler: Text("none", "linear", "cosine", what="scheduler") = Field(
        description="learning-rate schedule after the warm-up: none | linear | cosine")
    warmup_epochs: Integer(0) = Field(description="epochs of linear warm-up from 0 to learning_rate")
    gradient_clip: Number("a number >= 0 (0 = off)", ge=0) = Field(description="maximum gradient norm; 0: no clipping")
    patience: Integer(0) = Field(description="early stopping: epochs without a better validation loss")
    sampling: Text("stochastic", "loss_weight", what="sampling mode") = Field(
        description="how reweighting weights are used: stochastic (keep a jet with probability = weight) | "
                    "loss_weight (weight each jet's loss)")
    validation_fraction: Number("a fraction 0 <= f < 1", ge=0, lt=1) = Field(
        description="fraction of the training set held out for validation")
    class_weights: Union[Text("none", "balanced", what="class_weights"),
                         Annotated[dict[Name, Number("a class weight > 0", gt=0)], NonEmpty(
                             dict, "none, balanced or a mapping class -> weight",
                             "empty mapping; give class: weight pairs, or none")]] = Field(
        description="class balance on top of the reweighting, as loss weights in both sampling modes: none | "
                    "balanced (every output class the same summed weight) | {class: factor}")
    negative_weights: Text("drop", "abs", "signed", what="negative_weights") = Field(
        description="jets with a negative event weight (event_weight): drop (weight 0) | abs (|w|) | signed "
                    "(sampled by |w|, the sign in the loss; may converge slower)")


class SearchConfig(Section):
    """A hyperparameter search (HyperparameterSearchTask): what it varies and how it searches."""

    space: Space = Field(
        description="{setting: distribution}: training.<key> or model_settings.<Model>.<hyperparameter> -> "
                    "{log_uniform: [lo, hi]} | {uniform: [lo, hi]} | {int: [lo, hi], log: false} | {choice: [...]}")
    metric: Text(*METRIC_DIRECTIONS, what="metric") = Field(
        description="what ranks the trials, at the epoch whose weights a training keeps: val_loss | val_accuracy")
    direction: Text("minimize", "maximize", what="direction") = Field(
        description="minimize (val_loss) | maximize (val_accuracy)")
    sampler: Text("tpe", "random", what="sampler") = Field(
        description="how trials are drawn: tpe (Optuna's tree-structured Parzen estimator) | random")
    seed: Integer(0) = Field(description="the sampler's seed: a sequential search draws the same trials again")
    n_startup_trials: Integer(0) = Field(description="tpe: trials drawn at random before the estimator takes over")
    pruner: Text("median", "successive_halving", "none", what="pruner") = Field(
        description="stops unpromising trials after an epoch: median | successive_halving | none")
    pruner_startup_trials: Integer(0) = Field(
        description="median: trials that finish before any is pruned")
    pruner_warmup_epochs: Integer(0) = Field(
        description="epochs every trial trains before it may be pruned (successive_halving: its first rung)")

    @model_validator(mode="after")
    def _direction_fits_metric(self, info: ValidationInfo) -> SearchConfig:
        if self.direction != METRIC_DIRECTIONS[self.metric]:
            # named where the user wrote it: a direction left at its default is the metric's mistake
            sources = info.context
            at = "direction" if sources is None or sources.origin(("search", "direction")) == sources.user_file \
                else "metric"
            fail(f"{self.metric} is {'a loss' if self.direction == 'maximize' else 'an accuracy'}: searching with "
                 f"direction {self.direction} would look for the worst model; use direction "
                 f"{METRIC_DIRECTIONS[self.metric]}", at)
        return self


class AttackConfig(Section):
    """Which inputs an adversarial attack (--attack, --test-attack) may shift, and how far."""

    factors: Annotated[dict[Name, Number("a factor >= 0", ge=0)], EMPTY_IF_NULL] = Field(
        description="{feature: factor}: the feature's shift is at most factor x epsilon (default 1)")
    never: Annotated[Names("features", allow_empty=True), EMPTY_LIST_IF_NULL] = Field(
        description="features never attacked: integer-valued ones and flags (counts, charge, pdgId flags)")
    non_negative: Annotated[Names("features", allow_empty=True), EMPTY_LIST_IF_NULL] = Field(
        description="features clamped at zero (in their own units) after an attack")
    factors_file: Optional[Name] = Field(
        description="JSON file {\"format\": \"bhive-attack-factors/1\", \"factors\": {feature: factor}} (e.g. "
                    "data/simulation width ratios), relative to the config's directory; factors override it")


class RegressionTargetConfig(Section):
    """A continuous quantity predicted next to the flavour classes (``regression_targets.NAME``)."""

    branch: Optional[Name] = Field(None, description="branch with the true value per jet, e.g. gen_pt; exactly one "
                                                     "of branch, expression")
    expression: Optional[Expression] = Field(
        None, description="the true value as an expression over branches, e.g. 'gen_pt / jet_pt'; non-finite "
                          "values (np.nan for jets without a generator match) are masked in the loss")
    baseline: Optional[Expression] = Field(
        None, description="the estimate of the target without regression, a branch or expression (e.g. the reco "
                          "jet pt for a gen_pt target): the evaluation's 'before'; null: no before")
    loss: Text("mse", "huber", "quantile", what="regression loss") = Field(
        "mse", description="mse | huber | quantile (one output per quantile, pinball loss)")
    quantiles: Annotated[tuple[Number("a quantile 0 < q < 1", gt=0, lt=1), ...], EMPTY_LIST_IF_NULL] = Field(
        (), description="with loss quantile: the quantiles predicted, e.g. [0.16, 0.5, 0.84]")
    huber_delta: Number("a number > 0", gt=0) = Field(
        1.0, description="with loss huber: where the loss turns linear, in standard deviations of the target")
    weight: Number("a weight > 0", gt=0) = Field(
        1.0, description="weight of this target's loss beside the classification loss (weight 1)")

    @model_validator(mode="after")
    def _one_source_and_quantiles(self) -> RegressionTargetConfig:
        if (self.branch is None) == (self.expression is None):
            fail("give exactly one of 'branch' (e.g. 'branch: gen_pt') and 'expression'", "branch")
        if self.loss == "quantile":
            if not self.quantiles:
                fail("loss quantile needs the quantiles to predict, e.g. 'quantiles: [0.16, 0.5, 0.84]'", "quantiles")
            if list(self.quantiles) != sorted(set(self.quantiles)):
                fail("quantiles must be increasing and distinct", "quantiles")
        elif self.quantiles:
            fail(f"quantiles are only used with 'loss: quantile' (the loss is {self.loss}); remove them",
                 "quantiles")
        return self

    @property
    def source(self) -> str:
        """The true value as an expression (a branch name is one)."""
        return self.branch if self.branch is not None else self.expression


class ReweightingConfig(Section):
    """How the pT x eta weights are derived and checked."""

    min_count: Number("a number >= 0", ge=0) = Field(
        description="effective jets (sum w)^2/sum w^2 a label needs in every pT x eta bin where it has jets; "
                    "fewer is an error naming the bins, unless merge_sparse; 0: no check")
    merge_sparse: Bool = Field(description="merge bins below min_count with neighbouring bins (pT first) "
                                           "instead of failing")
    max_weight: Optional[Number("a number > 1", gt=1)] = Field(
        description="cap on a jet's weight as a multiple of its label's mean weight; null: no cap")
    share_warning: Number("a number >= 1", ge=1) = Field(
        description="warn when a label carries more than this multiple of 1/n_labels of the summed weight")


def _group(what: str) -> tuple[Any, Any, Any]:
    """The docs of a candidate group's keys: branches, count, custom features."""
    return (Field(description=f"{what}: feature branches; null: the group is not used"),
            Field(description=f"{what} kept per jet; required with the group, null without it"),
            Field(description=f"{what}: custom features {_EXPRESSIONS}; null: none"))


_CPF, _NPF, _VTX = _group("charged PF candidates"), _group("neutral PF candidates"), _group("secondary vertices")
_Count = Optional[Integer(1, "a number of candidates >= 1")]
_GroupNames = Names("candidate groups", allow_empty=True, item=Text(*CANDIDATE_GROUPS, what="candidate group"))
_Processes = Annotated[tuple[ProcessConfig, ...], NonEmpty(
    list, "a list of {name, match, cuts} entries", "the list is empty; list at least one process"),
    AfterValidator(_unique_processes)]
_Scores = Annotated[dict[Name, Name], NonEmpty(
    dict, "a mapping discriminator -> branch", "empty mapping; give at least one discriminator: branch pair")]
_Targets = Annotated[dict[Name, Number("a mis-identification rate 0 < x < 1", gt=0, lt=1)], NonEmpty(
    dict, "a mapping name -> target", "empty mapping; give at least one name: target pair, e.g. medium: 0.01")]


class ConfigFile(Section):
    """A working-group config: configs/NAME.yml layered over configs/default.yml."""

    treename: Name = Field(description="TTree inside each input file ('directory/tree')")
    samples: Optional[SamplesConfig] = Field(description="recorded input ntuples; exactly one of samples, simulate")
    simulate: Optional[SimulateSection] = Field(description="built-in generation; exactly one of samples, simulate")
    processes: Optional[_Processes] = Field(
        description="which input files belong to which physics process, in order; required with samples, "
                    "null with simulate: one process per simulated process")
    process_overlap: Text("error", "warn", what="process_overlap") = Field(
        description="what a file matching two processes' patterns is: error | warn")
    bins_pt: Edges(positive=True) = Field(
        description="jet pT bin edges in GeV: the preselection range and the pT axis of the reweighting histograms")
    bins_eta: Edges(positive=False) = Field(description="jet eta bin edges: the eta range and axis of the same")
    pt_key: Name = Field(description="the global feature that holds the jet pT")
    eta_key: Name = Field(description="the global feature that holds the jet eta")
    global_features: Names("global feature branches") = Field(description="per-jet input branches")
    global_custom_features: Annotated[Expressions, EMPTY_IF_NULL] = Field(description=f"per jet, {_EXPRESSIONS}")
    cpf_candidates: Optional[Names("cpf feature branches")] = _CPF[0]
    n_cpf_candidates: _Count = _CPF[1]
    cpf_custom_features: Optional[Expressions] = _CPF[2]
    npf_candidates: Optional[Names("npf feature branches")] = _NPF[0]
    n_npf_candidates: _Count = _NPF[1]
    npf_custom_features: Optional[Expressions] = _NPF[2]
    vtx_features: Optional[Names("vtx feature branches")] = _VTX[0]
    n_vtx_candidates: _Count = _VTX[1]
    vtx_custom_features: Optional[Expressions] = _VTX[2]
    optional_groups: Annotated[_GroupNames, EMPTY_LIST_IF_NULL] = Field(
        description="candidate groups (cpf, npf, vtx) that may be missing from the inputs: a group some input "
                    "file of either split lacks is left out of both splits' datasets (with a warning naming the "
                    "missing branches); []: a missing branch is an error")
    event_weight: Optional[Name] = Field(
        description="branch with each event's (or jet's) generator weight, e.g. genWeight; it may be negative "
                    "(NLO). Used in the reweighting histograms, training (training.negative_weights) and the "
                    "evaluation; null: every jet weighs 1")
    reweighting: ReweightingConfig = Field(description="checks and options of the pT x eta reweighting")
    attack: AttackConfig = Field(description="per-feature rules of adversarial attacks (--attack, --test-attack)")
    regression_targets: Annotated[dict[Name, RegressionTargetConfig], EMPTY_IF_NULL] = Field(
        description="{name: {branch | expression, baseline, loss, quantiles, huber_delta, weight}}: continuous "
                    "targets predicted next to the flavour (e.g. the generator-level jet pt); {}: none")
    truths: Truths = Field(description="truth labels: a list of boolean branches [isB, isC, ...], or rules "
                                       "label: [{branch: [values or {'>': x}]}, ...] (a jet needs every listed "
                                       "branch to match one of its values)")
    reference_flavour: Name = Field(description="the truth label whose pT x eta spectrum the others are "
                                                "reweighted to")
    classes: Optional[dict[Name, Names("truth labels")]] = Field(
        description="output class -> truth labels, e.g. {b: [b, bb, lepb], c: [c]}; null: one class per label")
    discriminators: Annotated[dict[Name, Discriminator], EMPTY_IF_NULL] = Field(
        description="name -> {signal: [classes], background: [classes]}, e.g. "
                    "BvsL: {signal: [b], background: [uds, g]}")
    reference_taggers: Annotated[dict[Name, _Scores], EMPTY_IF_NULL] = Field(
        description="scores of existing taggers in the inputs, for comparison plots: {tagger: {discriminator: branch}}")
    working_points: Annotated[dict[Name, _Targets], EMPTY_IF_NULL] = Field(
        description="{discriminator: {name: target mis-identification rate}}; {}: loose/medium/tight at "
                    "0.1/0.01/0.001 for BvsL, BvsAll and CvsL")
    working_points_on: Names("selections: all and/or process names") = Field(
        description="the jets working points are derived on, each selection with its own thresholds: 'all' "
                    "and/or process names, e.g. [all, ttbar] (BTV derives its working points on ttbar)")
    charm_working_points: Annotated[dict[Name, _Targets], EMPTY_IF_NULL] = Field(
        description="pairs of thresholds on two discriminators with the same signal, {name: {CvsL: target, "
                    "CvsB: target}}: of the pairs meeting both mis-identification targets, the one with the "
                    "highest efficiency; {}: loose/medium/tight for CvsL and CvsB where both exist")
    model_settings: Annotated[dict[Name, dict[Any, Any]], EMPTY_IF_NULL] = Field(
        description="{Model: {hyperparameter: value}}, passed to the model's constructor")
    processor: Name = Field(description="coffea processor that turns input ntuples into dataset shards (processors/)")
    dataloader: Name = Field(description="dataloader that feeds the shards to the model (dataloaders/)")
    model: Name = Field(description="model, by class name (models/); --model-name overrides it per run")
    training: TrainingConfig = Field(description="training defaults; task parameters override them per run")
    search: SearchConfig = Field(description="hyperparameter search (HyperparameterSearchTask): the settings it "
                                             "varies and how it searches")
    plugins: Annotated[Names("plugin modules", allow_empty=True, item=ModuleName), EMPTY_LIST_IF_NULL] = Field(
        description="Python modules (dotted names like my_group.taggers) whose models, dataloaders and "
                    "processors are registered besides the built-in ones")

    @property
    def truth_labels(self) -> tuple[str, ...]:
        return tuple(rule.label for rule in truth_rules(self.truths))

    @property
    def class_members(self) -> dict[str, tuple[str, ...]]:
        """``classes``, or one class per truth label where it is null."""
        return dict(self.classes) if self.classes is not None else {label: (label,) for label in self.truth_labels}

    @property
    def process_list(self) -> tuple[ProcessConfig, ...]:
        """``processes``, or one per simulated process where it is null."""
        if self.processes is not None:
            return self.processes
        return tuple(ProcessConfig(name=name, match=(f"*{name}_*",)) for name in self.simulate.processes)

    @model_validator(mode="after")
    def _one_input(self) -> ConfigFile:
        if (self.samples is None) == (self.simulate is None):
            problem = ("both 'samples' and 'simulate' are set; keep exactly one" if self.samples is not None
                       else "neither 'samples' nor 'simulate' is set; set exactly one")
            fail(f"{problem} ('samples: {{train: [...], test: [...]}}' for recorded ntuples, 'simulate: {{...}}' "
                 "for the built-in simulation)", "samples/simulate")
        if self.processes is None and self.simulate is None:
            fail("required key 'processes' is missing; with 'samples' list the processes and the file patterns "
                 "that belong to them, e.g. 'processes: [{name: ttbar, match: [\"*TTto*\"]}, "
                 "{name: qcd, match: [\"*QCD*\"]}]'", "processes")
        return self

    @model_validator(mode="after")
    def _features(self, info: ValidationInfo) -> ConfigFile:
        for key in ("pt_key", "eta_key"):
            value, sources = getattr(self, key), info.context
            if value not in self.global_features:
                where = ""
                if sources and sources.origin(("global_features",)) != sources.origin((key,)):
                    where = f" (global_features is set in {sources.origin(('global_features',)).name})"
                fail(f"{value!r} is not among global_features{where}{suggest(value, self.global_features)}", key)
        custom = {"global_custom_features": self.global_features}
        for group, (features_key, count_key, custom_key) in GROUP_KEYS.items():
            features = getattr(self, features_key)
            if features is None:
                for dependent in (count_key, custom_key):
                    if getattr(self, dependent) is not None:
                        fail(f"is set but the {group} group is absent; add '{features_key}: [...]' or remove "
                             f"'{dependent}'", dependent)
            elif getattr(self, count_key) is None:
                fail("", count_key, kind="missing")
            else:
                custom[custom_key] = features
        known_features = {*self.global_features, *self.global_custom_features}
        for group, (features_key, _, custom_key) in GROUP_KEYS.items():
            known_features.update(getattr(self, features_key) or ())
            known_features.update(getattr(self, custom_key) or {})
        for key in ("factors", "never", "non_negative"):
            for name in getattr(self.attack, key):
                if name not in known_features:
                    fail(f"unknown feature {name!r}{suggest(name, tuple(sorted(known_features)), 'Features')}",
                         "attack", key, name)
        for index, group in enumerate(self.optional_groups):
            if getattr(self, GROUP_KEYS[group][0]) is None:
                fail(f"the {group} group is not configured ('{GROUP_KEYS[group][0]}' is null), so it cannot be "
                     f"optional; remove it or configure the group", "optional_groups", index)
        known, unknown_means = None, ""  # recorded ntuples: branches are checked on the first files
        if self.simulate is not None:
            # imported here: it pulls in awkward, which a config of recorded ntuples does not need to load
            from bhive.simulation.ntuple import branch_names

            style = self.simulate.branch_style
            known, unknown_means = branch_names(style), f"not written by the simulation with branch_style {style}"
        for key, branch_features in custom.items():
            for name, expression in (getattr(self, key) or {}).items():
                if name in branch_features:
                    fail(f"custom feature {name!r} has the name of a branch feature; rename it", key, name)
                try:
                    expressions.validate(expression, known, unknown_means=unknown_means)
                except expressions.ExpressionError as error:
                    fail(str(error), key, name)
        for name, target in self.regression_targets.items():
            for key in ("branch", "expression", "baseline"):
                if getattr(target, key) is not None:
                    try:
                        expressions.validate(getattr(target, key), known, unknown_means=unknown_means)
                    except expressions.ExpressionError as error:
                        fail(str(error), "regression_targets", name, key)
        return self

    @model_validator(mode="after")
    def _searched_training_values(self) -> ConfigFile:
        check_training_values(self.search.space, TrainingConfig)
        return self

    @model_validator(mode="after")
    def _labels_classes_discriminators(self) -> ConfigFile:
        labels, classes, discriminators = self.truth_labels, self.class_members, tuple(self.discriminators)
        reference = self.reference_flavour
        if reference not in labels:
            fail(f"{reference!r} is not a truth label{suggest(reference, labels, 'Truth labels')}", "reference_flavour")
        if len(classes) < 2:
            fail(f"{len(classes)} output class(es); a tagger needs at least 2 classes", "classes")
        owner: dict[str, str] = {}
        for name, members in classes.items():
            for index, label in enumerate(members):
                if label not in labels:
                    fail(f"unknown truth label {label!r}{suggest(label, labels, 'Truth labels')}", "classes", name,
                         index)
                if label in owner:
                    fail(f"truth label {label!r} is already in class {owner[label]!r}; a label belongs to one class",
                         "classes", name, index)
                owner[label] = name
        if isinstance(self.training.class_weights, dict):
            for name in self.training.class_weights:
                if name not in classes:
                    fail(f"unknown class {name!r}{suggest(name, tuple(classes), 'Classes')}", "training",
                         "class_weights", name)
        for name, spec in self.discriminators.items():
            for side in ("signal", "background"):
                for index, member in enumerate(getattr(spec, side)):
                    if member not in classes:
                        fail(f"unknown class {member!r}{suggest(member, tuple(classes), 'Classes')}",
                             "discriminators", name, side, index)
        # working points may name the standard discriminators while a config declares none
        unknown = [("reference_taggers", tagger, name) for tagger, scores in self.reference_taggers.items()
                   for name in scores if name not in discriminators]
        unknown += [("working_points", name) for name in self.working_points if discriminators
                    and name not in discriminators]
        unknown += [("charm_working_points", point, name) for point, targets in self.charm_working_points.items()
                    for name in targets if discriminators and name not in discriminators]
        for at in unknown[:1]:
            fail(f"unknown discriminator {at[-1]!r}{suggest(at[-1], discriminators, 'Discriminators')}", *at)
        for point, targets in self.charm_working_points.items():
            if len(targets) != 2:
                fail(f"a charm working point names two discriminators with the same signal (e.g. CvsL and "
                     f"CvsB), not {len(targets)}", "charm_working_points", point)
            if self.discriminators:
                signals = {tuple(self.discriminators[name].signal) for name in targets}
                if len(signals) != 1:
                    fail(f"{' and '.join(targets)} have different signal classes; a charm working point pairs "
                         f"two discriminators of the same signal", "charm_working_points", point)
        names = ("all", *(process.name for process in self.process_list))
        for index, selection in enumerate(self.working_points_on):
            if selection not in names:
                fail(f"unknown selection {selection!r}{suggest(selection, names, 'Selections')}",
                     "working_points_on", index)
        return self


# --------------------------------------------------------------------------------------
# configs/schema.json: a config as written, an overlay on default.yml
# --------------------------------------------------------------------------------------


def _no_default(schema: dict) -> None:
    schema.pop("default", None)  # an overlay key's default is in default.yml, not here


@functools.cache
def overlay(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` as a file may write it: no key required, nested models overlays too; the same types,
    docs and value checks, no cross-field rules (one file alone need not be complete)."""

    def swap(tp: Any) -> Any:
        args, origin = get_args(tp), get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return overlay(tp)
        if origin is Annotated:
            return Annotated[(swap(args[0]), *tp.__metadata__)]
        if not args or origin is Literal:
            return tp
        return Union[tuple(map(swap, args))] if origin in (Union, UnionType) else origin[tuple(map(swap, args))]

    fields = {name: (Annotated[(swap(field.annotation), *field.metadata)] if field.metadata else swap(field.annotation),
                     Field(None, description=field.description, json_schema_extra=_no_default))
              for name, field in model.model_fields.items()}
    return create_model(model.__name__, __base__=Section, __doc__=model.__doc__, __module__=__name__, **fields)


class _NoTitles(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # a key's name is its title; the description says what it means


def schema_json() -> str:
    """The text of configs/schema.json (``python -m bhive.config --schema`` prints it)."""
    schema = overlay(ConfigFile).model_json_schema(schema_generator=_NoTitles)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "b-hive config",
              "$comment": f"generated from bhive/config/schema.py; regenerate with: {SCHEMA_COMMAND}"}
    return json.dumps(schema, indent=2) + "\n"
