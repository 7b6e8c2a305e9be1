"""uproot's class-name regularization, cached: the same names, the same trees."""

import uproot
import uproot.model

from bhive import class_names, inputs
from tests.deepntuple_files import TREE, write_deepntuple

NAMES = ["TBranch", "vector<int >", "std::vector< std::vector<float> >", "ROOT :: Math :: PxPyPzE4D<Double_t>",
         "map<TString,Int_t>", "Long64_t", None]


def test_cached_names_are_uproots_and_a_tree_opens_the_same(tmp_path, monkeypatch):
    # uproot's own function, even where an earlier test in this process has cached it already
    original = getattr(uproot.model.classname_regularize, "__wrapped__", uproot.model.classname_regularize)
    monkeypatch.setattr(uproot.model, "classname_regularize", original)
    path = tmp_path / "ntuple.root"
    write_deepntuple(path, 50, seed=1)
    with uproot.open(path) as file:
        before = {name: branch.typename for name, branch in file[TREE].iteritems()}

    class_names.cache_class_names()
    class_names.cache_class_names()  # idempotent: cached once
    cached = uproot.model.classname_regularize
    assert cached is not original and cached.__wrapped__ is original
    assert [cached(name) for name in NAMES] == [original(name) for name in NAMES]
    assert cached("ROOT :: Math :: PxPyPzE4D<Double_t>") == "ROOT::Math::PxPyPzE4D<double>"
    with uproot.open(path) as file:
        assert {name: branch.typename for name, branch in file[TREE].iteritems()} == before
    assert cached.cache_info().hits > 0
    assert inputs.tree_branches(str(path), TREE).branches == set(before)
