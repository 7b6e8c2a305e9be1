"""The processor's candidate arrays against awkward's own padding, for every list layout a
branch or an expression can give."""

import awkward as ak
import numpy as np
import pytest

from bhive.config import load_config
from bhive.plugins.processor import ProcessorError
from processors.deepntuple import DeepNtupleProcessor
from tests.deepntuple_files import unit_config, write_config

N_JETS, SLOTS = 300, 5


@pytest.fixture
def processor(tmp_path, monkeypatch):
    write_config(tmp_path / "configs", "unit", unit_config(tmp_path / "samples"))
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(tmp_path / "configs"))
    cfg = load_config("unit")
    return DeepNtupleProcessor(cfg, tmp_path / "pieces", {})


def padded(jagged: ak.Array, selected: np.ndarray) -> np.ndarray:
    """The straightforward version, list by list: the first SLOTS values, then zeros."""
    lists = [values[:SLOTS] for values in jagged[selected].to_list()]
    return np.array([values + [0.0] * (SLOTS - len(values)) for values in lists], dtype=np.float32)


def candidate_lists(seed: int) -> dict[str, ak.Array]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 9, N_JETS)
    pt = ak.unflatten(rng.exponential(10, counts.sum()), counts)                       # float64
    sip = ak.unflatten(rng.normal(0, 3, counts.sum()).astype(np.float32), counts)       # float32
    return {"pfcand_pt": pt, "pfcand_sip": sip}


LAYOUTS = {
    "offsets from zero": lambda a: a,
    # a slice of a larger chunk: offsets that do not start at zero
    "offsets from elsewhere": lambda a: ak.concatenate([a[:7], a])[7:],
    # a jet selection of lists: starts and stops
    "starts and stops": lambda a: a[np.arange(len(a))[::-1]][::-1],
    # an option type: flattened by awkward first
    "optional lists": lambda a: ak.mask(a, np.ones(len(a), bool), valid_when=True),
    # integer values
    "integers": lambda a: ak.values_astype(a * 10, np.int32),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_candidates_equal_awkwards_padding_for_every_layout(processor, layout):
    columns = {name: LAYOUTS[layout](values) for name, values in candidate_lists(1).items()}
    selected = np.random.default_rng(2).random(N_JETS) < 0.7
    group = processor.cfg.candidate_groups["cpf"]
    values, mask = processor._candidate_array(group, columns, selected, "file.root")
    expected = np.stack([padded(columns[name], selected) for name in group.features], axis=-1)
    np.testing.assert_array_equal(np.asarray(values), expected)
    counts = np.array([len(values) for values in columns["pfcand_pt"][selected].to_list()])
    np.testing.assert_array_equal(mask, np.arange(SLOTS)[None, :] < np.minimum(counts, SLOTS)[:, None])


def test_features_of_one_group_with_other_lengths_are_refused(processor):
    columns = candidate_lists(1)
    columns["pfcand_sip"] = candidate_lists(3)["pfcand_sip"]
    with pytest.raises(ProcessorError, match="'pfcand_pt' and 'pfcand_sip' of group cpf have different numbers"):
        processor._candidate_array(processor.cfg.candidate_groups["cpf"], columns, np.ones(N_JETS, bool), "f.root")


def test_a_scalar_candidate_feature_is_refused(processor):
    columns = candidate_lists(1)
    columns["pfcand_sip"] = np.zeros(N_JETS, np.float32)
    with pytest.raises(ProcessorError, match="'pfcand_sip' of group cpf is not a list per jet"):
        processor._candidate_array(processor.cfg.candidate_groups["cpf"], columns, np.ones(N_JETS, bool), "f.root")
