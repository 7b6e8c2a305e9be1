"""Adversarial attacks: FGSM is epsilon times the sign of the autograd gradient (by hand), PGD
stays in its box, padded candidates and never-attacked features do not move, non-negative
features stay non-negative; adversarial training and test attacks through the tasks."""

from __future__ import annotations

import json

import luigi
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch import nn

import models  # noqa: F401  (registers the shipped models)
from bhive import inference
from bhive.discriminators import discriminator
from bhive import training as fitting
from bhive.attacks import FACTORS_FORMAT, Attack, AttackError, Attacker, FeatureRules, read_factors_file
from bhive.config import ConfigError, load_config
from bhive.identity import VersionConflictError
from models.base import InputSpec, ModelError
from models.torch_model import TorchModel
from tasks.evaluation import EvaluationTask, InferenceTask
from tasks.training import TrainingTask
from tests.test_training_tasks import configure
from tests.training_data import tiny_dataset

GLOBAL = ("pt", "eta", "n_tracks")
CPF = ("track_pt", "sip", "charge")


class TinyTagger(TorchModel):
    """Global features and a candidate group, summed over real candidates."""

    registered = False
    input_groups = ("global", "cpf")

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        self.candidate = nn.Linear(spec.n_features("cpf"), 8)
        self.head = nn.Sequential(nn.Linear(spec.n_features("global") + 8, 16), nn.Tanh(),
                                  nn.Linear(16, spec.n_classes))

    def forward(self, batch):
        mask = batch["mask_cpf"].unsqueeze(-1).float()
        pooled = (torch.tanh(self.candidate(batch["cpf"])) * mask).sum(dim=1)
        return self.head(torch.cat([batch["global"], pooled], dim=1))


@pytest.fixture
def tagger():
    torch.manual_seed(0)
    spec = InputSpec(features={"global": GLOBAL, "cpf": CPF}, n_candidates={"cpf": 4}, classes=("b", "l"))
    model = TinyTagger(spec)
    model.set_standardisation({"global": (np.array([50.0, 0.0, 5.0]), np.array([20.0, 1.0, 2.0])),
                               "cpf": (np.array([3.0, 0.5, 0.0]), np.array([2.0, 2.0, 1.0]))})
    return model.train()


def batch(n: int = 64, seed: int = 1) -> tuple[dict, torch.Tensor]:
    rng = np.random.default_rng(seed)
    mask = np.arange(4)[None, :] < rng.integers(0, 5, n)[:, None]
    raw = {"global": np.stack([rng.uniform(30, 100, n), rng.normal(0, 1, n), rng.integers(0, 10, n)], axis=1),
           "cpf": np.stack([rng.uniform(0.0, 6.0, (n, 4)), rng.normal(0.5, 2, (n, 4)),
                            rng.choice([-1.0, 1.0], (n, 4))], axis=2) * mask[..., None],
           "mask_cpf": mask}
    tensors = {key: torch.as_tensor(value, dtype=torch.bool if key.startswith("mask") else torch.float32)
               for key, value in raw.items()}
    return tensors, torch.as_tensor(rng.integers(0, 2, n))


def gradient_by_hand(model, inputs, labels):
    leaves = {g: inputs[g].clone().requires_grad_(True) for g in ("global", "cpf")}
    mode = model.training
    loss = nn.functional.cross_entropy(model.eval()({**inputs, **leaves}), labels, reduction="sum")
    model.train(mode)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


RULES = FeatureRules(factors={"n_tracks": 0.0, "charge": 0.0, "sip": 2.0}, non_negative=("pt", "track_pt"))


def test_fgsm_is_epsilon_times_the_sign_of_the_gradient(tagger):
    raw, labels = batch()
    inputs = tagger.standardise(raw)
    attacked = Attacker(tagger, Attack("fgsm", epsilon=0.05), FeatureRules())(inputs, labels)
    gradient = gradient_by_hand(tagger, inputs, labels)
    torch.testing.assert_close(attacked["global"] - inputs["global"], 0.05 * torch.sign(gradient["global"]))
    mask = raw["mask_cpf"].unsqueeze(-1).float()
    torch.testing.assert_close(attacked["cpf"] - inputs["cpf"], 0.05 * torch.sign(gradient["cpf"]) * mask)
    assert tagger.training, "the attack leaves the model in the mode it found it in"
    # it raises the loss
    with torch.no_grad():
        loss = [float(nn.functional.cross_entropy(tagger.eval()(b), labels)) for b in (inputs, attacked)]
    assert loss[1] > loss[0]


def test_factors_never_features_and_padding(tagger):
    raw, labels = batch(seed=2)
    inputs = tagger.standardise(raw)
    attacked = Attacker(tagger, Attack("fgsm", epsilon=0.1), RULES)(inputs, labels)
    shift = {g: attacked[g] - inputs[g] for g in ("global", "cpf")}
    assert (shift["global"][:, 2] == 0).all() and (shift["cpf"][..., 2] == 0).all()  # never attacked
    assert (shift["cpf"][~raw["mask_cpf"]] == 0).all()  # padded candidates
    real = raw["mask_cpf"]
    sip = shift["cpf"][..., 1][real].abs()
    assert torch.allclose(sip[sip > 0], torch.tensor(0.2)) and (sip > 0).float().mean() > 0.9  # factor 2


def test_non_negative_features_stay_non_negative_in_their_units(tagger):
    raw, labels = batch(seed=3)
    raw["global"][:5, 0] = 0.5   # pt just above zero: a large shift would take it below
    raw["cpf"][:5, 0, 0] = 0.01
    inputs = tagger.standardise(raw)
    attacked = Attacker(tagger, Attack("fgsm", epsilon=3.0), RULES)(inputs, labels)
    pt = tagger.raw_column(attacked, "global", "pt")
    track_pt = tagger.raw_column(attacked, "cpf", "track_pt")[raw["mask_cpf"]]
    assert pt.min() >= -1e-4 and track_pt.min() >= -1e-4
    assert (pt < 1.0).any(), "some pt was pushed to the floor"
    assert tagger.raw_column(attacked, "global", "eta").min() < -1  # eta is not clamped


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_its_box_and_beats_fgsm_in_loss(tagger, random_start):
    raw, labels = batch(seed=4)
    inputs = tagger.standardise(raw)
    pgd = Attacker(tagger, Attack("pgd", epsilon=0.2, iterations=8, random_start=random_start), RULES)(inputs, labels)
    box = {"global": torch.tensor([0.2, 0.2, 0.0]), "cpf": torch.tensor([0.2, 0.4, 0.0])}
    for group in ("global", "cpf"):
        assert ((pgd[group] - inputs[group]).abs() <= box[group] + 1e-6).all()
    assert (pgd["cpf"][~raw["mask_cpf"]] == 0).all()
    fgsm = Attacker(tagger, Attack("fgsm", epsilon=0.2), RULES)(inputs, labels)
    with torch.no_grad():
        losses = [float(nn.functional.cross_entropy(tagger.eval()(b), labels, reduction="sum")) for b in (fgsm, pgd)]
    assert losses[1] >= losses[0] - 1e-3


def test_attack_settings_are_checked():
    with pytest.raises(AttackError, match="unknown attack 'pgdd'"):
        Attack("pgdd")
    with pytest.raises(AttackError, match="epsilon must be > 0"):
        Attack("fgsm", epsilon=0)
    assert Attack().label() == "nominal" and Attack().identity(True) == {}
    assert Attack("pgd", epsilon=0.1, iterations=5, random_start=True).label() == "pgd_eps0.1_it5_rs"


def test_factors_file_and_config_checks(tmp_path):
    path = tmp_path / "factors.json"
    path.write_text(json.dumps({"format": FACTORS_FORMAT, "factors": {"sip": 1.5}}))
    assert read_factors_file(path) == {"sip": 1.5}
    path.write_text(json.dumps({"factors": {"sip": 1.5}}))
    with pytest.raises(AttackError, match=f"factors.json.*{FACTORS_FORMAT}"):
        read_factors_file(path)
    path.write_text(json.dumps({"format": FACTORS_FORMAT, "factors": {"sip": -1}}))
    with pytest.raises(AttackError, match="numbers >= 0"):
        read_factors_file(path)
    raw = yaml.safe_load((load_config("hlt_ak4").path).read_text())
    raw["attack"]["never"].append("pfcand_chrage")
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="attack.never.*pfcand_chrage.*did you mean 'pfcand_charge'"):
        load_config(tmp_path / "bad.yml")


def test_adversarial_training_changes_the_model_and_gradient_boosting_refuses(tmp_path, monkeypatch):
    cfg, directory = tiny_dataset(tmp_path, monkeypatch, model_settings={"DNN": {"hidden": [16]}})
    weights = {}
    for attack in ("none", "fgsm"):
        settings = fitting.training_settings(cfg, epochs=1, batch_size=128, learning_rate=3e-3, warmup_epochs=0,
                                             patience=0, seed=7, attack=attack, attack_epsilon=0.2)
        model = fitting.build(cfg, "DNN", directory, settings.seed)
        history = model.fit(fitting.loader(cfg, model, directory, settings), settings, tmp_path / attack)
        assert np.isfinite(history[-1]["val_loss"])
        weights[attack] = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(*weights.values()))
    settings = fitting.training_settings(cfg, attack="fgsm")
    model = fitting.build(cfg, "GradientBoosting", directory)
    with pytest.raises(ModelError, match="GradientBoosting cannot be trained with --attack fgsm"):
        model.fit(fitting.loader(cfg, model, directory, settings), settings, tmp_path / "gb")


@pytest.mark.slow
def test_test_attack_through_the_tasks(tmp_path, monkeypatch, store):
    configure(tmp_path, monkeypatch)
    attacked = EvaluationTask(config="unit", version="v1", model_name="DNN", executor="iterative",
                              test_attack="fgsm", test_attack_epsilon=0.5)
    assert luigi.build([attacked], local_scheduler=True, workers=1, log_level="WARNING")
    # nominal and attacked scores of the same training side by side, never in one directory
    plain, shifted = attacked.nominal().local_path(), InferenceTask.req(attacked).local_path()
    assert shifted.name == "DNN-fgsm_eps0.5" and plain.name == "DNN"
    nominal, under_attack = (inference.read_predictions(path) for path in (plain, shifted))
    assert under_attack["info"]["attack"] == "fgsm_eps0.5" and not np.allclose(nominal["arrays"]["scores"],
                                                                              under_attack["arrays"]["scores"])
    table = json.loads(attacked.local_path("robustness.json").read_text())
    assert {row["discriminator"] for row in table} == {"BvsL"}
    assert table[0]["auc_attacked"] < table[0]["auc_nominal"]
    arrays = nominal["arrays"]
    used = arrays["label"] != 1
    values = discriminator(arrays["scores"], nominal["info"]["classes"], ["isB"], ["isL"])
    assert table[0]["auc_nominal"] == pytest.approx(roc_auc_score(arrays["label"][used] == 0, values[used]), abs=1e-9)
    assert "## Robustness under fgsm_eps0.5" in attacked.local_path("summary.md").read_text()
    # the nominal training stays valid; an adversarial one under its version is a conflict
    assert TrainingTask(config="unit", version="v1", model_name="DNN").complete()
    with pytest.raises(VersionConflictError, match=r'settings\.attack\.kind: \(not recorded\) -> "fgsm".*--training-version'):
        TrainingTask(config="unit", version="v1", model_name="DNN", attack="fgsm").complete()
