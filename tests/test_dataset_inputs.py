"""Bad inputs: one clear, early error each, naming the file/branch/key, and nothing marked complete."""

import logging
import re
import shutil

import luigi
import pytest
import uproot

from bhive import construction, inputs
from bhive.config import load_config
from processors.deepntuple import DeepNtupleProcessor
from processors.nanoaod import NanoAODProcessor
from tasks.dataset import DatasetConstructionTask
from tests import deepntuple_files, nanoaod_files
from tests.deepntuple_files import unit_config, write_config, write_deepntuple

# how the inflater reports a basket that does not inflate: ISA-L (bhive.decompression), or zlib
# where isal is not installed
INFLATE_ERROR = r"(zlib\.error|[\w.]*IsalError): "


@pytest.fixture
def samples(tmp_path):
    directory = tmp_path / "samples"
    directory.mkdir()
    write_deepntuple(directory / "train_ttbar_0.root", 300, seed=1)
    write_deepntuple(directory / "train_qcd_0.root", 200, seed=2)
    return directory


@pytest.fixture
def configure(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    monkeypatch.setenv("BHIVE_CONFIG_DIR", str(configs))

    def make(sample_dir, **overrides):
        write_config(configs, "bad", unit_config(sample_dir, **overrides))
        return load_config("bad")
    return make


@pytest.fixture
def run_and_fail(store, caplog):
    """Run the dataset task and return luigi's error log, after checking nothing is complete."""

    def run() -> str:
        # a version of its own per test: luigi keeps per-process state keyed by task id
        task = DatasetConstructionTask(config="bad", version=store.parent.name, executor="iterative",
                                       chunk_size=250)
        with caplog.at_level(logging.WARNING):
            assert not luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
        assert not task.complete()
        assert not list(store.rglob("meta.json"))
        assert caplog.text, "luigi logged no error"
        return caplog.text
    return run


def test_missing_file(samples, configure, run_and_fail):
    configure(samples, samples={"train": [str(samples / "train_ttbar_0.root"), str(samples / "nope.root")],
                                "test": [str(samples / "train_qcd_0.root")]})
    message = run_and_fail()
    assert "nope.root" in message and "does not exist" in message


def test_glob_matching_nothing(samples, configure, run_and_fail):
    configure(samples, samples={"train": [str(samples / "other_*.root")], "test": [str(samples / "*.root")]})
    message = run_and_fail()
    assert "other_*.root" in message and "matches no file" in message


def test_truncated_file(samples, configure, run_and_fail):
    broken = samples / "train_ttbar_0.root"
    data = broken.read_bytes()
    cut = len(data) // 3
    broken.write_bytes(data[:cut])
    configure(samples)
    message = run_and_fail()
    assert (f"truncated or corrupt ROOT file: {broken} (expected {len(data) - cut} bytes at offset {cut}: "
            f"the header records {len(data)} bytes, the file has {cut})") in message
    assert "has no tree" not in message


def test_not_a_root_file(samples, configure, run_and_fail):
    broken = samples / "train_ttbar_0.root"
    broken.write_text("this is not ROOT")
    configure(samples)
    message = run_and_fail()
    assert f"not a ROOT file: {broken} (it starts with b'this', not b'root')" in message


def test_garbage_in_a_basket_is_reported_when_it_is_read(samples, configure, run_and_fail):
    broken = samples / "train_qcd_0.root"
    offset, size = basket_span(broken, deepntuple_files.TREE, "jet_pt")
    overwrite(broken, offset + size // 2)
    configure(samples)
    message = run_and_fail()
    assert re.search(re.escape(f"truncated or corrupt ROOT file: {broken} (expected {size} bytes at offset {offset} "
                               f"for basket 0 of branch 'jet_pt': ") + INFLATE_ERROR, message)
    assert "Replace or re-copy the file, or drop it from `samples`" in message


def test_wrong_tree_name_lists_the_trees(samples, configure, run_and_fail):
    configure(samples, treename="deepntuplizer/tree")
    message = run_and_fail()
    assert "deepntuplizer/tree" in message and "producer/custom_tree" in message and "treename" in message


def test_missing_branches_are_listed(samples, configure, run_and_fail):
    configure(samples, global_features=["jet_pt", "jet_eta", "npv", "jet_mass", "nCpfcand"])
    message = run_and_fail()
    assert "jet_mass" in message and "nCpfcand" in message and "train_" in message
    assert "the config reads them" in message and "use ntuples that have them" in message


def test_branch_read_only_by_an_expression_is_checked_before_processing(samples, configure, run_and_fail):
    configure(samples, global_custom_features={"log_mass": "np.log(jet_mass)"})
    message = run_and_fail()
    assert "train_" in message and "jet_mass" in message and "missing" in message
    assert "evaluation failed" not in message


def test_missing_truth_branch(samples, configure, run_and_fail):
    configure(samples, truths=["isB", "isC", "isUDS"], discriminators={"BvsL": {"signal": ["isB"], "background": ["isUDS"]}})
    message = run_and_fail()
    assert "truth branch" in message and "isUDS" in message


def test_missing_reference_tagger_branch(samples, configure, run_and_fail):
    configure(samples, reference_taggers={"Old": {"BvsL": "jet_old_score"}})
    message = run_and_fail()
    assert "reference tagger branch(es) jet_old_score missing; fix `reference_taggers` in the config" in message


def test_selection_leaving_zero_jets(samples, configure, run_and_fail):
    configure(samples, bins_pt=[5000.0, 6000.0])
    message = run_and_fail()
    assert "zero jets" in message and "bins_pt" in message


def test_label_with_zero_jets(samples, configure, run_and_fail):
    configure(samples, truths={"b": [{"isB": [1]}], "c": [{"isC": [1]}], "light": [{"isL": [1]}],
                               "busy": [{"npv": [{">": 1000}]}]},
              reference_flavour="b", discriminators={"BvsL": {"signal": ["b"], "background": ["light"]}})
    message = run_and_fail()
    assert "busy" in message


def test_overlapping_truth_rules(samples, configure, run_and_fail):
    configure(samples, truths={"b": [{"isB": [1]}], "heavy": [{"isB": [1]}], "light": [{"isL": [1]}]},
              reference_flavour="b", discriminators={"BvsL": {"signal": ["b"], "background": ["light"]}})
    message = run_and_fail()
    assert "b" in message and "heavy" in message and "exclusive" in message


# -- damaged files, checked one by one ----------------------------------------------------

FLAVOURS = {"deepntuple": deepntuple_files.TREE, "nanoaod": nanoaod_files.TREE}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """One healthy file of each flavour; tests damage copies of them."""
    directory = tmp_path_factory.mktemp("healthy")
    write_deepntuple(directory / "deepntuple.root", 300, seed=1)
    nanoaod_files.write_nanoaod(directory / "nanoaod.root", 200, seed=1)
    return directory


@pytest.fixture(params=sorted(FLAVOURS))
def copy(request, healthy, tmp_path):
    """A fresh copy of one flavour's healthy file, and its tree name."""
    path = tmp_path / f"{request.param}.root"
    shutil.copy(healthy / path.name, path)
    return path, FLAVOURS[request.param]


def basket_span(path, treename, branch) -> tuple[int, int]:
    """Offset and size of a branch's first basket."""
    with uproot.open(path) as file:
        member = file[treename][branch].member
        return int(member("fBasketSeek")[0]), int(member("fBasketBytes")[0])


def overwrite(path, offset, garbage=bytes(range(64))) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + len(garbage)] = garbage
    path.write_bytes(bytes(data))


def check(path, treename, branches=frozenset()) -> int:
    return inputs.check_file(str(path), treename, set(branches), set())


def cut_points(path, treename) -> dict[str, int]:
    """Where a file is cut: inside each part of its structure, and just short of its end."""
    with uproot.open(path) as file:
        key = file.key(treename)
        points = {"keys": file.fSeekKeys + 10, "tree": key.fSeekKey + key.fNbytes // 2,
                  "streamers": file.file.fSeekInfo + 10}
    size = path.stat().st_size
    return {**points, "middle": size // 2, "end": size - 8}


@pytest.mark.parametrize("part", ["keys", "tree", "streamers", "middle", "end"])
def test_a_file_cut_anywhere_is_truncated(copy, part):
    path, treename = copy
    data = path.read_bytes()
    cut = cut_points(path, treename)[part]
    path.write_bytes(data[:cut])
    with pytest.raises(inputs.InputFileError) as raised:
        check(path, treename)
    assert str(raised.value) == (
        f"truncated or corrupt ROOT file: {path} (expected {len(data) - cut} bytes at offset {cut}: the header "
        f"records {len(data)} bytes, the file has {cut}). Replace or re-copy the file, or drop it from `samples` "
        f"in the config")


def test_a_file_cut_inside_its_header_is_truncated(copy):
    path, treename = copy
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(inputs.InputFileError) as raised:
        check(path, treename)
    assert re.fullmatch(rf"truncated or corrupt ROOT file: {re.escape(str(path))} \(expected \d+ bytes at offset 0: "
                        rf"the file ends before\)\. Replace or re-copy .*", str(raised.value))


def test_garbage_in_the_tree_record_is_corruption_not_a_missing_tree(copy):
    path, treename = copy
    with uproot.open(path) as file:
        key = file.key(treename)
        offset, size = key.fSeekKey, key.fNbytes
    overwrite(path, offset + key.fKeylen + 20)
    with pytest.raises(inputs.InputFileError) as raised:
        check(path, treename)
    message = str(raised.value)
    assert message.startswith(f"truncated or corrupt ROOT file: {path} (expected {size} bytes at offset {offset} "
                              f"for the TTree '{treename.split('/')[-1]}': ")
    assert "has no tree" not in message


def test_garbage_in_a_basket_passes_the_structural_check(copy):
    path, treename = copy
    branch = "jet_pt" if treename == deepntuple_files.TREE else "Jet_pt"
    offset, size = basket_span(path, treename, branch)
    overwrite(path, offset + size // 2)
    assert check(path, treename, {branch}) > 0  # baskets are read, and found damaged, while processing


def test_an_empty_file_is_not_root(tmp_path):
    path = tmp_path / "empty.root"
    path.write_bytes(b"")
    with pytest.raises(inputs.InputFileError, match=re.escape(f"not a ROOT file: {path} (the file is empty). ")):
        check(path, "Events")


def test_a_text_file_is_not_root(tmp_path):
    path = tmp_path / "notes.root"
    path.write_text("this is not ROOT\n" * 100)
    with pytest.raises(inputs.InputFileError,
                       match=re.escape(f"not a ROOT file: {path} (it starts with b'this', not b'root'). ")):
        check(path, "Events")


def test_a_missing_tree_in_a_healthy_file_lists_the_trees(copy):
    path, _ = copy
    with pytest.raises(inputs.InputError) as raised:
        check(path, "nope")
    assert not isinstance(raised.value, inputs.InputFileError)
    assert f"'{path}' has no tree 'nope'; trees in the file: " in str(raised.value)


def test_the_check_reads_no_basket(healthy, monkeypatch):
    path, treename = healthy / "nanoaod.root", nanoaod_files.TREE
    with uproot.open(path) as file:
        tree = file[treename]
        source_class = type(file.file.source)
        baskets = [(seek, seek + size) for branch in tree.branches
                   for seek, size in zip(branch.member("fBasketSeek")[:branch.num_baskets],
                                         branch.member("fBasketBytes")[:branch.num_baskets])]
    requested = []
    chunk, chunks = source_class.chunk, source_class.chunks

    def recorded_chunk(self, start, stop):
        requested.append((start, stop))
        return chunk(self, start, stop)

    def recorded_chunks(self, ranges, notifications):
        requested.extend(ranges)
        return chunks(self, ranges, notifications)

    monkeypatch.setattr(source_class, "chunk", recorded_chunk)
    monkeypatch.setattr(source_class, "chunks", recorded_chunks)
    assert check(path, treename, {"Jet_pt", "PFCands_pt"}) == 200
    # uproot reads a fixed amount at offset 0 for the header, whatever follows it
    later = [(start, stop) for start, stop in requested if start > 0]
    assert later, "the check read nothing but the header"
    assert not [r for r in later for b in baskets if r[0] < b[1] and b[0] < r[1]]
    assert sum(stop - start for start, stop in requested) < path.stat().st_size / 10


def damaged_basket_in_worker_processes(healthy, tmp_path) -> tuple[inputs.InputFileError, str]:
    """The error of processing, on 2 worker processes, a copy of the NanoAOD file with garbage
    in its first Jet_pt basket, and the message it must start with."""
    path = tmp_path / "nanoaod.root"
    shutil.copy(healthy / path.name, path)
    offset, size = basket_span(path, nanoaod_files.TREE, "Jet_pt")
    overwrite(path, offset + size // 2)
    settings = construction.ExecutorSettings(executor="futures", processes=2, chunk_size=100)
    with pytest.raises(inputs.InputFileError) as raised:
        construction.process_files(load_config("nanoaod_ak4"), [str(path)], tmp_path / "pieces", settings,
                                   NanoAODProcessor, file_processes={str(path): 0}, seed=1)
    return raised.value, (f"truncated or corrupt ROOT file: {path} (expected {size} bytes at offset {offset} for "
                          f"basket 0 of branch 'Jet_pt': ")


@pytest.mark.filterwarnings("ignore:Performed attempt")
def test_a_damaged_basket_read_by_worker_processes_names_the_file(healthy, tmp_path):
    error, start = damaged_basket_in_worker_processes(healthy, tmp_path)
    assert re.match(re.escape(start) + INFLATE_ERROR, str(error))


@pytest.mark.filterwarnings("ignore:Performed attempt")
def test_a_damaged_basket_is_named_when_workers_send_errors_with_their_causes(healthy, tmp_path):
    # importing dask.distributed makes every error pickle with its cause and context (tblib), as
    # a worker sends it back: none of them may be of a class that does not pickle, as ISA-L's
    # inflate error is
    from tblib import pickling_support

    pickling_support.install()
    error, start = damaged_basket_in_worker_processes(healthy, tmp_path)
    assert str(error).startswith(start)


def test_an_input_file_error_is_recovered_from_the_message_of_a_wrapper():
    original = inputs.InputFileError("/data/a (1).root", inputs.CORRUPT, "expected 8 bytes at offset 4: it's gone")
    wrapper = Exception(f"Failed processing file: WorkItem(filename='/data/a (1).root'). The error was: {original!r}.")
    assert str(inputs.input_error_in(wrapper)) == str(original)
    assert inputs.input_error_in(Exception("something else")) is None


def test_checks_on_worker_processes_report_the_first_bad_file_in_the_order_given(samples, configure, tmp_path):
    """With the futures executor the files are opened for the checks by its workers, side by
    side: the error is still the first bad file's, in one line, before any piece is written."""
    truncated, not_root = samples / "train_qcd_0.root", samples / "train_zz_0.root"
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) // 3])
    not_root.write_text("this is not ROOT")
    files = [str(samples / "train_ttbar_0.root"), str(truncated), str(not_root)]
    settings = construction.ExecutorSettings(executor="futures", processes=2, chunk_size=100)
    for order, expected in ((files, "truncated or corrupt ROOT file: " + str(truncated)),
                            ([files[0], files[2], files[1]], f"not a ROOT file: {not_root}")):
        with pytest.raises(inputs.InputError) as raised:
            construction.process_files(configure(samples), order, tmp_path / "pieces", settings, DeepNtupleProcessor,
                                       seed=1)
        assert str(raised.value).startswith(expected)
        assert not (tmp_path / "pieces").exists()
