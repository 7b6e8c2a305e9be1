"""ParticleNet and ParticleTransformer: shapes, masking, permutation invariance, learning,
configuration errors and ONNX export, all on tiny models and generated batches."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.base import InputSpec, ModelError
from models.particle_transformer import ParticleTransformer, pair_features
from models.particlenet import FAR_AWAY, ParticleNet, nearest_neighbours

CPF = ("pfcand_pt", "pfcand_eta", "pfcand_phi", "pfcand_energy", "pfcand_etarel", "pfcand_phirel")
VTX = ("sv_pt", "sv_etarel", "sv_phirel", "sv_mass")
GLOBAL = ("jet_pt", "jet_eta", "n_cpf", "n_sv")
N_CPF, N_VTX = 10, 3
CLASSES = ("b", "c", "light")

FOUR_VECTOR = {"pt": "pfcand_pt", "eta": "pfcand_eta", "phi": "pfcand_phi", "energy": "pfcand_energy"}
TINY = {
    ParticleNet: {"coordinates": ["pfcand_etarel", "pfcand_phirel"], "k": 4,
                  "conv_channels": [[16, 16], [32, 32]], "fc": [32], "embed_channels": 8},
    ParticleTransformer: {"four_vector": FOUR_VECTOR, "embed_dims": [16, 16], "pair_embed_dims": [8],
                          "num_heads": 2, "num_blocks": 2, "num_class_blocks": 1, "ffn_ratio": 2},
}
MODELS = [ParticleNet, ParticleTransformer]


def make_spec(groups: tuple[str, ...] = ("global", "cpf", "vtx")) -> InputSpec:
    features = {"global": GLOBAL, "cpf": CPF, "vtx": VTX}
    sizes = {"cpf": N_CPF, "vtx": N_VTX}
    return InputSpec(features={g: features[g] for g in groups},
                     n_candidates={g: sizes[g] for g in groups if g in sizes}, classes=CLASSES)


def raw_batch(n_jets: int, generator: torch.Generator, label_shift: torch.Tensor | None = None) -> dict:
    """Jets in physical units with between 0 and all candidates real (zero-padded after them)."""
    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    pt = 1 + torch.empty(n_jets, N_CPF).exponential_(0.1, generator=generator)
    eta = uniform(n_jets, N_CPF, low=-2.5, high=2.5)
    energy = pt * torch.cosh(eta) * uniform(n_jets, N_CPF, low=1.0, high=1.05)
    cpf = torch.stack([pt, eta, uniform(n_jets, N_CPF, low=-math.pi, high=math.pi), energy,
                       0.2 * torch.randn(n_jets, N_CPF, generator=generator),
                       0.2 * torch.randn(n_jets, N_CPF, generator=generator)], dim=-1)
    vtx = torch.stack([5 + 20 * uniform(n_jets, N_VTX), 0.1 * torch.randn(n_jets, N_VTX, generator=generator),
                       0.1 * torch.randn(n_jets, N_VTX, generator=generator), 4 * uniform(n_jets, N_VTX)], dim=-1)
    if label_shift is not None:
        cpf[..., 4] += label_shift[:, None]
        vtx[..., 3] += label_shift[:, None]
    n_cpf = torch.randint(0, N_CPF + 1, (n_jets,), generator=generator)
    n_cpf[:3] = torch.tensor([N_CPF, 1, 0])[: n_jets]  # full, a single candidate, none at all
    n_vtx = torch.randint(0, N_VTX + 1, (n_jets,), generator=generator)
    mask_cpf = torch.arange(N_CPF) < n_cpf[:, None]
    mask_vtx = torch.arange(N_VTX) < n_vtx[:, None]
    glob = torch.stack([pt.sum(1), eta[:, 0], n_cpf.float(), n_vtx.float()], dim=1)
    return {"global": glob, "cpf": cpf * mask_cpf[..., None], "mask_cpf": mask_cpf,
            "vtx": vtx * mask_vtx[..., None], "mask_vtx": mask_vtx}


def build(model_class, spec: InputSpec, batch: dict, **overrides):
    """A tiny model with standardisation fitted to ``batch``, in eval mode."""
    model = model_class.create(spec, **{**TINY[model_class], **overrides})
    statistics = {}
    for group in model.groups:
        values = batch[group] if group == "global" else batch[group][batch[f"mask_{group}"]]
        statistics[group] = (values.mean(0).numpy(), values.std(0).clamp(min=1e-3).numpy())
    model.set_standardisation(statistics)
    return model.eval()


def model_input(model, batch: dict) -> dict:
    return model.standardise({key: batch[key] for key in model.input_keys()})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine threads that wait
    for each other make these tests tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator() -> torch.Generator:
    """The random stream of the generated jets; the global seed fixes the models' initial weights."""
    torch.manual_seed(0)
    return torch.Generator().manual_seed(1)


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("groups", [("global", "cpf", "vtx"), ("cpf",), ("cpf", "vtx")])
def test_forward_gives_one_logit_per_class(model_class, groups, generator):
    batch = raw_batch(7, generator)
    model = build(model_class, make_spec(groups), batch)
    with torch.no_grad():
        logits = model(model_input(model, batch))
    assert logits.shape == (7, len(CLASSES))
    assert torch.isfinite(logits).all()


def test_particlenet_puts_vertices_in_the_graph_only_with_their_coordinates(generator):
    batch = raw_batch(5, generator)
    pooled = build(ParticleNet, make_spec(), batch)
    joined = build(ParticleNet, make_spec(), batch, coordinates_vtx=["sv_etarel", "sv_phirel"])
    assert pooled.graph_groups == ["cpf"] and pooled.pooled_groups == ["vtx"]
    assert joined.graph_groups == ["cpf", "vtx"] and joined.pooled_groups == []
    with torch.no_grad():
        assert joined(model_input(joined, batch)).shape == (5, len(CLASSES))


def test_particlenet_never_asks_for_more_neighbours_than_there_are_points(generator):
    batch = raw_batch(4, generator)
    model = build(ParticleNet, make_spec(("cpf",)), batch, k=16)
    assert model.k == N_CPF - 1
    with torch.no_grad():
        assert torch.isfinite(model(model_input(model, batch))).all()


def test_nearest_neighbours_excludes_the_point_itself():
    points = torch.tensor([[[0.0, 1.0, 3.0, 10.0]]])  # (B=1, D=1, P=4)
    assert nearest_neighbours(points, 2)[0].tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]


def test_nearest_neighbours_are_found_in_float32_under_half_precision_autocast(generator):
    points = torch.randn(4, 2, 10, generator=generator)
    points[:, :, 6:] += FAR_AWAY  # padded points, beyond the range of float16
    with torch.autocast("cpu", dtype=torch.float16):
        half = nearest_neighbours(points, 4)
    assert torch.equal(half, nearest_neighbours(points, 4))
    assert (nearest_neighbours(points, 4)[:, :6] < 6).all()


@pytest.mark.parametrize("model_class,extra", [
    (ParticleNet, {}), (ParticleNet, {"coordinates_vtx": ["sv_etarel", "sv_phirel"]}), (ParticleTransformer, {})])
def test_padded_candidates_do_not_change_the_output(model_class, extra, generator):
    """Neither the content nor the number of padded slots may matter: garbage is written into
    the padded slots and three more padded slots are appended to every group."""
    batch = raw_batch(16, generator)
    model = build(model_class, make_spec(), batch, **extra)
    clean = model_input(model, batch)
    dirty = dict(clean)
    for group in ("cpf", "vtx"):
        mask = torch.cat([clean[f"mask_{group}"], torch.zeros(16, 3, dtype=torch.bool)], dim=1)
        candidates = torch.cat([clean[group], torch.zeros(16, 3, clean[group].shape[-1])], dim=1)
        garbage = 3 * torch.randn(candidates.shape, generator=generator)
        dirty[group], dirty[f"mask_{group}"] = torch.where(mask[..., None], candidates, garbage), mask
    with torch.no_grad():
        torch.testing.assert_close(model(dirty), model(clean), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class,extra", [
    (ParticleNet, {}), (ParticleNet, {"coordinates_vtx": ["sv_etarel", "sv_phirel"]}), (ParticleTransformer, {})])
def test_output_does_not_depend_on_the_candidate_order(model_class, extra, generator):
    batch = raw_batch(16, generator)
    model = build(model_class, make_spec(), batch, **extra)
    inputs = model_input(model, batch)
    permuted = dict(inputs)
    for group, size in (("cpf", N_CPF), ("vtx", N_VTX)):
        order = torch.randperm(size, generator=generator)
        permuted[group], permuted[f"mask_{group}"] = inputs[group][:, order], inputs[f"mask_{group}"][:, order]
    with torch.no_grad():
        torch.testing.assert_close(model(permuted), model(inputs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_class", MODELS)
def test_a_few_steps_learn_a_separable_task(model_class, generator):
    labels = torch.arange(48) % len(CLASSES)
    # The class moves the candidates' etarel and the vertices' mass: visible only to the
    # candidate branches, since the global features carry no label information.
    batch = raw_batch(48, generator, label_shift=labels.float())
    model = build(model_class, make_spec(), batch, dropout=0.0).train()
    inputs = model_input(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("model_class", MODELS)
def test_half_precision_autocast_stays_close_to_float32(model_class, generator):
    batch = raw_batch(8, generator)
    model = build(model_class, make_spec(), batch)
    inputs = model_input(model, batch)
    with torch.no_grad():
        reference = model(inputs)
        with torch.autocast("cpu", dtype=torch.float16):
            half = model(inputs)
    torch.testing.assert_close(half.float(), reference, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("model_class", MODELS)
def test_saved_model_loads_with_its_hyperparameters(model_class, generator, tmp_path):
    batch = raw_batch(5, generator)
    model = build(model_class, make_spec(), batch)
    model.save(tmp_path)
    loaded = model_class.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(model_input(loaded, batch)), model(model_input(model, batch)))


def test_particlenet_needs_its_coordinates(generator):
    spec = make_spec()
    with pytest.raises(ModelError, match="'coordinates'"):
        ParticleNet(spec)
    with pytest.raises(ModelError, match="pfcand_deta"):
        ParticleNet(spec, coordinates=["pfcand_deta", "pfcand_phirel"])
    with pytest.raises(ModelError, match="sv_phi'"):
        ParticleNet(spec, coordinates=["pfcand_etarel", "pfcand_phirel"], coordinates_vtx=["sv_etarel", "sv_phi"])
    with pytest.raises(ModelError, match="coordinates_vtx"):
        ParticleNet(spec, coordinates=["pfcand_etarel", "pfcand_phirel"], coordinates_vtx=["sv_etarel"])
    with pytest.raises(ModelError, match="list of column names"):
        ParticleNet(spec, coordinates="pfcand_etarel")
    with pytest.raises(ModelError, match="'npf'"):
        ParticleNet(spec, coordinates=["pfcand_etarel", "pfcand_phirel"], coordinates_npf=["a", "b"])


def test_particle_transformer_needs_its_four_vector():
    spec = make_spec()
    with pytest.raises(ModelError, match="'four_vector'"):
        ParticleTransformer(spec)
    with pytest.raises(ModelError, match="pfcand_e'"):
        ParticleTransformer(spec, four_vector={**FOUR_VECTOR, "energy": "pfcand_e"})
    with pytest.raises(ModelError, match="missing: phi"):
        ParticleTransformer(spec, four_vector={"pt": "pfcand_pt", "eta": "pfcand_eta"})


def paper_pair_features(pt, eta, phi, mass) -> np.ndarray:
    """ln Delta, ln k_T, ln z, ln m^2 of every pair, straight from the definitions in float64
    (of the float32 inputs the model sees); a candidate with itself gives -inf or NaN."""
    pt, eta, phi, mass = (np.asarray(x, dtype=np.float32).astype(np.float64) for x in (pt, eta, phi, mass))
    energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
    momenta = np.stack([energy, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)
    rapidity = 0.5 * np.log((momenta[:, 0] + momenta[:, 3]) / (momenta[:, 0] - momenta[:, 3]))
    dphi = (phi[:, None] - phi[None, :] + np.pi) % (2 * np.pi) - np.pi
    delta = np.hypot(rapidity[:, None] - rapidity[None, :], dphi)
    pt_min = np.minimum(pt[:, None], pt[None, :])
    total = momenta[:, None] + momenta[None, :]
    m2 = total[..., 0] ** 2 - (total[..., 1:] ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([np.log(delta), np.log(pt_min * delta), np.log(pt_min / (pt[:, None] + pt[None, :])),
                         np.log(m2)])


def test_pair_features_match_the_paper_definitions():
    pt, eta, phi = [10.0, 30.0, 5.0], [0.1, -0.2, 1.9], [3.1, -3.1, 0.4]  # one pair across phi = +-pi
    mass = [0.1, 0.5, 1.8]
    expected = paper_pair_features(pt, eta, phi, mass)
    off_diagonal = ~np.eye(3, dtype=bool)
    inputs = [torch.tensor([values]) for values in (pt, eta, phi, mass)]
    energy = torch.sqrt((inputs[0] * torch.cosh(inputs[1])) ** 2 + inputs[3] ** 2)
    everything = torch.tensor([[True, True, True]])
    for features in (pair_features(*inputs[:3], everything, mass=inputs[3]),
                     pair_features(*inputs[:3], everything, energy=energy)):
        np.testing.assert_allclose(features[0].numpy()[:, off_diagonal], expected[:, off_diagonal], rtol=1e-4)

    padded = pair_features(*inputs[:3], torch.tensor([[True, False, True]]), mass=inputs[3])
    assert torch.equal(padded[0, :, :, 1], torch.zeros(4, 3)) and torch.equal(padded[0, :, 1, :], torch.zeros(4, 3))


def test_pair_mass_of_nearly_collinear_candidates_is_exact():
    """The cancellation in (E_a + E_b)^2 - |p_a + p_b|^2 turned these pairs, and every massless
    candidate paired with itself, into float32 rounding noise (ln m^2 off by up to 12)."""
    pt = [250.0, 40.0, 3.0, 120.0]
    eta = [1.9, 1.9 + 2e-4, -0.7, 1.9 - 5e-4]
    phi = [0.5, 0.5 + 3e-4, 2.0, 0.5 - 5e-4]
    expected = paper_pair_features(pt, eta, phi, [0.0] * 4)
    features = pair_features(*(torch.tensor([values]) for values in (pt, eta, phi)), torch.ones(1, 4, dtype=bool))
    off_diagonal = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(features[0].numpy()[:, off_diagonal], expected[:, off_diagonal], rtol=2e-5, atol=2e-5)
    # a massless candidate with itself: Delta, k_T and m^2 are exactly zero, floored at the same value
    diagonal = features[0, :, range(4), range(4)]
    assert torch.equal(diagonal[[0, 1, 3]], torch.full((3, 4), float(np.log(np.float32(1e-8)))))


class _PositionalInputs(torch.nn.Module):
    """The model with its batch dict unrolled into positional tensors, as ONNX graphs take them."""

    def __init__(self, model, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors):
        return self.model(dict(zip(self.keys, tensors)))


@pytest.mark.parametrize("model_class", MODELS)
def test_onnx_export_reproduces_torch(model_class, generator):
    import onnxruntime

    batch = raw_batch(6, generator)
    model = build(model_class, make_spec(), batch, **(
        {"coordinates_vtx": ["sv_etarel", "sv_phirel"]} if model_class is ParticleNet else {}))
    keys = model.input_keys()
    inputs = model_input(model, batch)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(_PositionalInputs(model, keys).eval(), tuple(inputs[k] for k in keys), buffer, dynamo=False,
                          opset_version=17, input_names=list(keys), output_names=["logits"],
                          dynamic_axes={name: {0: "jets"} for name in (*keys, "logits")})
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])

    other = raw_batch(11, generator)  # another batch size: the batch axis must be dynamic
    other_inputs = model_input(model, other)
    (onnx_logits,) = session.run(None, {k: other_inputs[k].numpy() for k in keys})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits, model(other_inputs).numpy(), atol=1e-4, rtol=1e-4)


def test_rapidity_differences_of_massive_nearly_collinear_candidates_are_exact():
    """With masses, the rapidity difference of two nearly collinear candidates is their eta
    difference plus a small offset computed by arithmetic alone, so it keeps the eta
    difference's precision (a difference of two logarithms would not, and runtimes round
    logarithms differently)."""
    pt, eta, phi = [12.0, 12.5, 3.0], [1.3, 1.3 + 3e-5, -0.4], [0.2, 0.2 + 2e-5, 1.0]
    mass = [0.1396, 0.1396, 0.4937]
    expected = paper_pair_features(pt, eta, phi, mass)
    features = pair_features(*(torch.tensor([values]) for values in (pt, eta, phi)), torch.ones(1, 3, dtype=bool),
                             mass=torch.tensor([mass]))
    off_diagonal = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(features[0].numpy()[:, off_diagonal], expected[:, off_diagonal], rtol=2e-5, atol=2e-5)
