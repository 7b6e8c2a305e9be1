"""The processor contract: one chunk of events in, one dataset piece out.

A processor for a new ntuple flavour subclasses :class:`JetProcessor` and writes one
method, :meth:`JetProcessor.jet_table`, that turns a chunk of events into one record per jet.
Everything after that is common to all flavours and lives here: custom features, the pt/eta
preselection, truth labels, padding candidates to fixed size, dropping non-finite jets,
the per-label pt x eta histograms, and writing the piece.

Processors run under coffea's ``processor.Runner`` with any executor (iterative, futures,
dask), so ``process`` depends only on its chunk and the processor's own settings.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection
from pathlib import Path

import awkward as ak
import numpy as np
from coffea import processor
from coffea.nanoevents import BaseSchema, NanoEventsFactory

from bhive import class_names, collector, decompression, expressions, inputs, packed, pieces, reweighting
from bhive.dataset import EVENT_WEIGHT, TARGET, TARGET_BASELINE
from bhive.config import Config
from bhive.plugins.registry import Registry
from bhive.truth import truth_index

#: name of each candidate group's array and its mask in a dataset
GROUP_ARRAYS = {"cpf": ("cpf", "mask_cpf"), "npf": ("npf", "mask_npf"), "vtx": ("vtx", "mask_vtx")}

PROCESSORS = Registry("processor", "Set `processor:` in the config")


class ProcessorError(ValueError):
    """A chunk of input that the processor cannot turn into a piece."""


class JetProcessor(processor.ProcessorABC):
    """Base of processor plugins; subclasses implement :meth:`jet_table`.

    Subclasses register by class name, so ``processor: MyProcessor`` in a config selects
    them once their module is imported (``processors/__init__.py`` imports the shipped ones).

    Parameters
    ----------
    cfg:
        the validated config (features, truth rules, bins, reference taggers).
    piece_directory:
        where pieces are written; must be reachable from every worker.
    file_processes:
        process index of every input file, keyed by the file name as the executor sees it.
    seed:
        the dataset's seed, which orders each piece's jets by their shard keys
        (:mod:`bhive.pieces`).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PROCESSORS.add(cls)

    def __init__(self, cfg: Config, piece_directory: str | Path, file_processes: dict[str, int],
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.piece_directory = str(piece_directory)
        self.file_processes = dict(file_processes)
        self.seed = seed

    # -- what subclasses provide ---------------------------------------------------------

    @abstractmethod
    def jet_table(self, events) -> ak.Array:
        """One entry per jet for a chunk of events.

        Fields: every branch the config reads, by the name the config uses. Global features,
        truth branches and reference-tagger branches are one value per jet; candidate
        features are a variable-length list per jet (all features of one group with the
        same lengths). Further fields are ignored.
        """

    def required_branches(self, available: Collection[str] | None = None) -> set[str]:
        """Input branches that must exist in every file (checked before processing).

        ``available``: the branches of the file being checked, for a flavour whose branch
        names differ between files of one format (NanoAOD's PF candidates); None: the names
        as the config writes them.
        """
        return self.cfg.branches() | set(self.cfg.reference_branches())

    def read_branches(self, available: Collection[str]) -> set[str]:
        """The branches :meth:`jet_table` reads from a file with branches ``available``; a
        flavour that reads some branches only where a file has them adds those."""
        return self.required_branches(available) & set(available)

    # -- common processing ---------------------------------------------------------------

    def process(self, events) -> dict:
        """Write the chunk's piece (or keep it, when an interrupted run left it complete);
        returns ``{"pieces": {piece name}}``, which coffea merges over the chunks."""
        metadata = events.metadata
        source = metadata["filename"]
        name = pieces.piece_name(source, metadata.get("treename", ""), metadata["entrystart"], metadata["entrystop"])
        directory = Path(self.piece_directory) / name
        # a piece of another layout (left by an interrupted run of older code) is made again
        if not pieces.is_current(pieces.read_info(directory)):
            self._make_piece(events, directory)
        # the piece's name alone: its info is in its directory, and coffea merges every chunk's
        # output into everything merged before it (unpickled and pickled again each time), so
        # anything per piece here costs time quadratic in the number of chunks
        return {"pieces": {name}}

    @collector.long_lived_objects_frozen()  # also in workers that process_files did not fork (dask's)
    def _make_piece(self, events, directory: Path) -> None:
        """Build the piece of the chunk ``events`` and write it to ``directory``."""
        metadata = events.metadata
        source = metadata["filename"]
        decompression.inflate_zlib_with_isal()
        class_names.cache_class_names()  # for the trees coffea opens for the chunks after this one
        damaged = None
        try:
            arrays, info = self.build(self.jet_table(self._read(events)), source)
        except Exception as error:
            # the baskets are read here, so damage in them surfaces here
            damaged = inputs.damaged_file_error(source, error)
            if damaged is None:
                if isinstance(error, ValueError):
                    raise  # b-hive's own errors already name the file and the fix
                raise ProcessorError(
                    f"{source} (entries {metadata['entrystart']}-{metadata['entrystop']}) cannot be processed: "
                    f"{type(error).__name__}: {error}") from error
        if damaged is not None:
            # raised outside the handler, without the reader's error as cause or context (the
            # message carries it): dask pickles an error with both, and ISA-L's does not pickle
            raise damaged
        info.update(file=source, entry_start=metadata["entrystart"], entry_stop=metadata["entrystop"])
        pieces.write_piece(directory, arrays, info, self.seed,
                           masks={a: m for a, m in GROUP_ARRAYS.values() if a in arrays})

    def postprocess(self, accumulator):
        return accumulator

    def _read(self, events):
        """``events`` with the branches :meth:`jet_table` reads, loaded in one read of the tree.

        coffea's events show no branch (:func:`bhive.construction.no_branch`): laid out by
        coffea, each branch would be read when first used, once per buffer (offsets, then
        values), about a fifth slower than reading all of them together. Events of another
        source than an open ROOT file are returned as they are.
        """
        handle = getattr(events.attrs.get("@events_factory"), "file_handle", None)
        if handle is None:
            return events
        metadata = dict(events.metadata)
        tree = handle[metadata["treename"]]
        arrays = _Loaded(tree.arrays(sorted(self.read_branches(tree.keys())), entry_start=metadata["entrystart"],
                                     entry_stop=metadata["entrystop"], how=dict))
        arrays.metadata = {"uuid": str(tree.file.uuid), "object_path": tree.object_path,
                           "num_rows": metadata["entrystop"] - metadata["entrystart"]}
        return NanoEventsFactory.from_preloaded(arrays, schemaclass=BaseSchema, metadata=metadata).events()

    def build(self, table: ak.Array, source: str) -> tuple[dict[str, np.ndarray | packed.PackedArray], dict]:
        """Arrays and bookkeeping of one chunk's jets (no I/O); the candidate groups as
        :class:`~bhive.packed.PackedArray`, read as the zero-padded arrays."""
        cfg = self.cfg
        columns = {field: table[field] for field in table.fields}
        self._add_custom_features(columns, source)
        n_read = len(table)

        pt = _scalar(columns, cfg.pt_key, source)
        eta = _scalar(columns, cfg.eta_key, source)
        in_range = ((pt >= cfg.bins_pt[0]) & (pt < cfg.bins_pt[-1])
                    & (eta >= cfg.bins_eta[0]) & (eta < cfg.bins_eta[-1]))
        truth_columns = {b: _scalar(columns, b, source) for rule in cfg.truths for b in
                         (c.branch for c in rule.conditions)}
        truth = truth_index(truth_columns, cfg.truths, source)
        selected = in_range & (truth >= 0)

        arrays = {"global": self._global_array(columns, selected, source)}
        for group in cfg.candidate_groups.values():
            values, mask = self._candidate_array(group, columns, selected, source)
            array_name, mask_name = GROUP_ARRAYS[group.name]
            arrays[array_name], arrays[mask_name] = values, mask
        arrays["truth"] = truth[selected].astype(np.int16)
        arrays["kinematics"] = np.stack([pt[selected], eta[selected]], axis=1).astype(np.float32)
        arrays["process"] = np.full(int(selected.sum()), self.file_processes.get(source, -1), dtype=np.int16)
        reference_branches = cfg.reference_branches()
        arrays["extras"] = np.stack([_scalar(columns, b, source)[selected] for b in reference_branches], axis=1) \
            .astype(np.float32) if reference_branches else np.zeros((int(selected.sum()), 0), np.float32)
        if cfg.event_weight:
            arrays[EVENT_WEIGHT] = _scalar(columns, cfg.event_weight, source)[selected].astype(np.float32)
        if cfg.regression_targets:
            arrays[TARGET], arrays[TARGET_BASELINE] = self._targets(columns, selected, source)

        # a jet without a valid regression target (no generator match) stays: its target is
        # masked in the loss, and it is a jet like any other for the flavour
        finite = np.ones(len(arrays["truth"]), dtype=bool)
        for key in ("global", "cpf", "npf", "vtx", "kinematics", EVENT_WEIGHT):
            if key in arrays:
                values = arrays[key]
                flags = np.isfinite(values.entries if isinstance(values, packed.PackedArray) else values)
                if flags.all():  # nearly always: no reduction per jet, a fifth of its time
                    continue
                if isinstance(values, packed.PackedArray):
                    finite &= packed.rows_all(flags.all(axis=1), values.offsets)
                else:
                    finite &= flags.all(axis=tuple(range(1, values.ndim)))
        if not finite.all():
            arrays = {k: v.select(finite) if isinstance(v, packed.PackedArray) else v[finite]
                      for k, v in arrays.items()}

        sums = reweighting.bin_sums(arrays["kinematics"][:, 0], arrays["kinematics"][:, 1], arrays["truth"],
                                    cfg.bins_pt, cfg.bins_eta, len(cfg.truth_labels), arrays.get(EVENT_WEIGHT))
        info = {
            "process": int(self.file_processes.get(source, -1)),
            "n_jets": int(len(arrays["truth"])),
            "counts": {
                "read": int(n_read),
                "out_of_range": int((~in_range).sum()),
                "no_label": int((in_range & (truth < 0)).sum()),
                "non_finite": int((~finite).sum()),
                "kept": int(len(arrays["truth"])),
            },
            **sums.to_json(),
            "max_abs_event_weight": float(np.abs(arrays[EVENT_WEIGHT]).max(initial=0.0)) if cfg.event_weight else 1.0,
        }
        if cfg.regression_targets:
            valid = np.isfinite(arrays[TARGET]).sum(axis=0)
            info["valid_targets"] = {name: int(n) for name, n in zip(cfg.regression_targets, valid)}
        return arrays, info

    def _targets(self, columns: dict, selected: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
        """The (jets, targets) true values and baselines; NaN where a value is not finite or a
        target has no baseline."""
        n = int(selected.sum())
        targets = self.cfg.regression_targets
        values = np.full((n, len(targets)), np.nan, dtype=np.float32)
        baselines = np.full((n, len(targets)), np.nan, dtype=np.float32)
        for index, (name, target) in enumerate(targets.items()):
            for out, expression, what in ((values, target.source, name), (baselines, target.baseline,
                                                                         f"{name} baseline")):
                if expression is None:
                    continue
                value = expressions.evaluate(expression, columns, f"regression target {what}", source)
                out[:, index] = (value if np.ndim(value) == 0 else _per_jet(value, what, source)[selected])
        values[~np.isfinite(values)] = np.nan  # inf as well: one marker of "no valid value"
        baselines[~np.isfinite(baselines)] = np.nan
        return values, baselines

    def _add_custom_features(self, columns: dict, source: str) -> None:
        cfg = self.cfg
        custom = dict(cfg.global_custom_features)
        for group in cfg.candidate_groups.values():
            custom.update(group.custom_features)
        for name, expression in custom.items():
            columns[name] = expressions.evaluate(expression, columns, name, source)

    def _global_array(self, columns, selected, source) -> np.ndarray:
        names = [*self.cfg.global_features, *self.cfg.global_custom_features]
        n = int(selected.sum())
        out = np.empty((n, len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            out[:, i] = _scalar(columns, name, source)[selected]
        return out

    def _candidate_array(self, group, columns, selected, source) -> tuple[packed.PackedArray, np.ndarray]:
        """The (jets, n_candidates, features) array, packed, and its (jets, n_candidates) mask."""
        names = [*group.features, *group.custom_features]
        size = group.n_candidates
        counts, lists = None, []
        for name in names:
            jagged = columns[name]
            if not isinstance(jagged, ak.Array) or jagged.ndim != 2:
                raise ProcessorError(f"{source}: candidate feature '{name}' of group {group.name} is not a list "
                                     f"per jet; move it to global_features or fix the branch name")
            starts, stops, content = _list_buffers(jagged)
            if counts is None:
                counts = stops - starts
            elif not np.array_equal(stops - starts, counts):
                raise ProcessorError(f"{source}: candidate features '{names[0]}' and '{name}' of group {group.name} "
                                     f"have different numbers of entries per jet; they must come from one collection")
            lists.append((starts, content))
        # Index arithmetic on the list boundaries: for each candidate that is kept (a selected
        # jet's first `size`), its place in the feature's flat buffer. One gather per feature
        # into a feature-major block, one transposition into the packed entries: numpy's fast
        # paths, with no jagged selection and no padding.
        kept = np.minimum(counts[selected], size)
        offsets = np.concatenate([[0], np.cumsum(kept)])
        within = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], kept)
        gathered = np.empty((len(names), int(offsets[-1])), dtype=np.float32)
        first_starts = None
        for (starts, content), out in zip(lists, gathered):
            if first_starts is None or not np.array_equal(starts, first_starts):
                first_starts = starts
                origin = np.repeat(starts[selected], kept) + within
            if content.dtype == np.float32:
                np.take(content, origin, out=out)
            else:
                out[:] = content[origin]
        mask = np.arange(size)[None, :] < kept[:, None]
        return packed.PackedArray(np.ascontiguousarray(gathered.T), mask, offsets), mask


def _list_buffers(jagged: ak.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, stops, values) of a list of numbers per jet: the jet's values are
    ``values[starts[i]:stops[i]]``. Read from the layout's own buffers where it is one flat
    buffer of numbers (as uproot reads a branch); any other layout is flattened first."""
    layout = jagged.layout
    content = getattr(layout, "content", None)
    if isinstance(content, ak.contents.NumpyArray) and content.data.ndim == 1:
        if isinstance(layout, ak.contents.ListOffsetArray):
            offsets = np.asarray(layout.offsets.data)
            return offsets[:-1], offsets[1:], np.asarray(content.data)
        if isinstance(layout, ak.contents.ListArray):
            return np.asarray(layout.starts.data), np.asarray(layout.stops.data), np.asarray(content.data)
    counts = ak.to_numpy(ak.num(jagged, axis=1))
    stops = np.cumsum(counts)
    return stops - counts, stops, ak.to_numpy(ak.flatten(jagged))


class _Loaded(dict):
    """Branch name -> array, with the ``metadata`` coffea's preloaded events are made from."""

    metadata: dict


def _scalar(columns: dict, name: str, source: str) -> np.ndarray:
    try:
        values = columns[name]
    except KeyError:
        raise ProcessorError(f"{source}: branch '{name}' is missing from the processor's jet table") from None
    return _per_jet(values, name, source)


def _per_jet(values, name: str, source: str) -> np.ndarray:
    """``values`` (numpy or awkward, one per jet) as a numpy array."""
    if isinstance(values, ak.Array):
        if values.ndim != 1:
            raise ProcessorError(f"{source}: '{name}' has more than one value per jet; use it as a candidate "
                                 f"feature or pick a scalar branch")
        values = ak.to_numpy(values)
    return np.asarray(values)


def processor_class(name: str) -> type[JetProcessor]:
    """The registered processor class called ``name``; an unknown name lists the known ones."""
    return PROCESSORS.get(name)
