"""A parametrised CMS-like detector response for generator-level jets.

This is b-hive's own fast simulation, not a CMS one: it aims at the features a b tagger
learns from, with the imperfections that keep a tagger honest.

- Tracks: efficiency below one (lower at low pt and for particles produced far from the
  beam line), pt resolution, and impact parameters computed from the true production
  vertex with a pt- and angle-dependent resolution whose residuals have non-Gaussian
  tails. Impact parameters are measured from a reconstructed primary vertex with its own
  resolution, and signed by the jet axis as in CMS (positive when the point of closest
  approach lies downstream along the jet).
- Pileup tracks that survive charged-hadron subtraction and fake tracks, both rising with
  the number of primary vertices ``npv``; pileup photons likewise.
- Neutral candidates: photons and neutral hadrons with calorimeter energy smearing and
  thresholds.
- Secondary vertices from displaced tracks sharing a true decay vertex, with an
  efficiency that depends on track count and flight distance, a K0S/Lambda veto, and fake
  vertices from random track pairs. Flavour dependence is not put in by hand: it follows
  from B and D hadrons flying further and decaying into more tracks.

Distances are in mm inside this module; the ntuple writer converts to CMS's cm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bhive.simulation.jets import JetTable, kinematics

PION_MASS = 0.13957
PROTON_MASS = 0.93827
K0S_MASS = 0.49761
LAMBDA_MASS = 1.11568
CHARM_MASS_THRESHOLD = 1.5  # GeV, as in the CSV "above charm" variables

# Signal origins of a track.
SIGNAL, PILEUP, FAKE = 0, 1, 2


@dataclass(frozen=True)
class DetectorModel:
    """Parameters of the detector response; the defaults are tuned to CMS-like performance."""

    # tracking
    track_pt_min: float = 0.5
    track_abs_eta_max: float = 2.5
    track_efficiency: float = 0.92
    track_turn_on: float = 0.35            # GeV scale of the low-pt efficiency loss
    displaced_track_length: float = 120.0  # mm: efficiency falls with production radius
    pt_resolution: float = 0.008
    pt_resolution_curvature: float = 1.5e-4  # per GeV
    ip_xy_floor: float = 0.015             # mm
    ip_xy_scattering: float = 0.095        # mm GeV
    ip_z_floor: float = 0.030
    ip_z_scattering: float = 0.140
    tail_fraction: float = 0.13            # residual drawn 3x wider
    tail_width: float = 3.0
    far_tail_fraction: float = 0.025       # residual from a Student-t with 2 dof, 4x wider
    far_tail_width: float = 4.0
    pv_resolution_xy: float = 0.010
    pv_resolution_z: float = 0.020
    pileup_tracks_per_vertex: float = 0.02
    pileup_dz_width: float = 1.5           # mm: pileup vertices close enough to survive CHS
    fake_tracks: float = 0.04
    fake_tracks_per_vertex: float = 0.0025
    fake_track_ip_width: float = 0.35      # mm
    # lepton identification
    muon_pt_min: float = 3.0
    muon_efficiency: float = 0.90
    electron_pt_min: float = 2.0
    electron_efficiency: float = 0.75
    lepton_misid: float = 0.005
    # calorimetry
    photon_stochastic: float = 0.05
    photon_constant: float = 0.01
    photon_energy_min: float = 1.0
    hadron_stochastic: float = 1.0
    hadron_constant: float = 0.05
    hadron_energy_min: float = 2.0
    hadron_angular_resolution: float = 0.02
    pileup_photons_per_vertex: float = 0.04
    # jets
    jet_noise: float = 4.0                 # GeV
    jet_stochastic: float = 1.0            # sqrt(GeV)
    jet_constant: float = 0.05
    # secondary vertices
    sv_efficiency_two_tracks: float = 0.55
    sv_efficiency_three_tracks: float = 0.75
    sv_efficiency_many_tracks: float = 0.85
    sv_flight_turn_on: float = 0.25        # mm
    sv_max_dxy: float = 25.0               # mm
    sv_resolution_xy: float = 0.025        # mm, divided by sqrt(ntracks - 1)
    sv_resolution_z: float = 0.040
    sv_min_dxy_significance: float = 3.0
    v0_veto_efficiency: float = 0.9
    fake_sv: float = 0.01
    fake_sv_per_vertex: float = 0.0004
    fake_sv_per_track: float = 0.003
    fake_sv_flight: float = 0.5            # mm, mean of the exponential flight distance


@dataclass
class ReconstructedJets:
    """Detector-level jets of one batch as flat arrays.

    ``jets`` has one entry per jet; ``tracks``, ``neutrals`` and ``vertices`` one entry
    per object with a ``jet`` column indexing ``jets``, sorted by jet.
    """

    jets: dict[str, np.ndarray]
    tracks: dict[str, np.ndarray]
    neutrals: dict[str, np.ndarray]
    vertices: dict[str, np.ndarray]


def _take(table: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in table.items()}


def _concat(*tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def _delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def delta_r(eta1, phi1, eta2, phi2) -> np.ndarray:
    return np.hypot(eta1 - eta2, _delta_phi(phi1, phi2))


def _residuals(rng: np.random.Generator, n: int, model: DetectorModel) -> np.ndarray:
    """Unit-width measurement residuals with a wider Gaussian and a power-law tail."""
    draw = rng.random(n)
    residual = rng.standard_normal(n)
    wide = draw < model.tail_fraction
    residual[wide] *= model.tail_width
    far = draw > 1.0 - model.far_tail_fraction
    residual[far] = rng.standard_t(2, far.sum()) * model.far_tail_width
    return residual


def _group_starts(group: np.ndarray, n_groups: int) -> np.ndarray:
    counts = np.bincount(group, minlength=n_groups)
    return np.concatenate([[0], np.cumsum(counts)[:-1]])


def _uniform_in_cone(rng, jet_eta, jet_phi, radius=0.4):
    r = radius * np.sqrt(rng.random(len(jet_eta)))
    angle = rng.uniform(0, 2 * np.pi, len(jet_eta))
    return jet_eta + r * np.cos(angle), jet_phi + r * np.sin(angle)


def _momentum(pt, eta, phi):
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)


class Detector:
    """Applies a :class:`DetectorModel` to generator-level jets with a given random stream."""

    def __init__(self, model: DetectorModel, rng: np.random.Generator, npv_mean: float) -> None:
        self.model = model
        self.rng = rng
        self.npv_mean = npv_mean

    # -- event and jet level -------------------------------------------------------------

    def reconstruct(self, table: JetTable) -> ReconstructedJets:
        rng, m = self.rng, self.model
        jets = dict(table.jets)
        n_jets = len(table)
        n_events = int(jets["event"].max()) + 1 if n_jets else 0
        npv = np.maximum(rng.poisson(self.npv_mean, n_events), 1)
        pv = np.stack([rng.normal(0, m.pv_resolution_xy, n_events),
                       rng.normal(0, m.pv_resolution_xy, n_events),
                       rng.normal(0, m.pv_resolution_z, n_events)], axis=1)
        jets["npv"] = npv[jets["event"]]
        jets["pv"] = pv[jets["event"]]
        jets["axis"] = np.stack([jets["px"], jets["py"], jets["pz"]], axis=1) / jets["p"][:, None]

        pt = jets["pt"]
        resolution = np.sqrt((m.jet_noise / pt) ** 2 + m.jet_stochastic**2 / pt + m.jet_constant**2)
        response = np.clip(1.0 + resolution * rng.standard_normal(n_jets), 0.3, None)
        jets["gen_pt"] = pt
        jets["reco_pt"] = pt * response
        jets["reco_energy"] = jets["e"] * response
        jets["reco_mass"] = jets["mass"] * response

        tracks = self._tracks(table, jets)
        neutrals = self._neutrals(table, jets)
        vertices = self._vertices(tracks, jets)
        self._add_vertex_distances(tracks, vertices, jets)
        self._add_vertex_distances(neutrals, vertices, jets)
        jets["n_tracks"] = np.bincount(tracks["jet"], minlength=n_jets)
        jets["n_neutrals"] = np.bincount(neutrals["jet"], minlength=n_jets)
        jets["n_vertices"] = np.bincount(vertices["jet"], minlength=n_jets)
        jets.update(self._csv_variables(tracks, vertices, jets))
        return ReconstructedJets(jets=jets, tracks=tracks, neutrals=neutrals, vertices=vertices)

    # -- tracks --------------------------------------------------------------------------

    def _tracks(self, table: JetTable, jets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng, m = self.rng, self.model
        c = table.constituents
        charged = c["charge"] != 0
        kin = kinematics(c["px"], c["py"], c["pz"], c["e"])
        radius = np.hypot(c["vx"], c["vy"])
        efficiency = (m.track_efficiency * (1 - np.exp(-(kin["pt"] - m.track_pt_min) / m.track_turn_on))
                      * np.exp(-radius / m.displaced_track_length))
        found = (charged & (kin["pt"] > m.track_pt_min) & (np.abs(kin["eta"]) < m.track_abs_eta_max)
                 & (rng.random(len(efficiency)) < efficiency))
        signal = {
            "jet": c["jet"][found], "pdg_id": c["pdg_id"][found], "charge": c["charge"][found],
            "px": c["px"][found], "py": c["py"][found], "pz": c["pz"][found],
            "vx": c["vx"][found], "vy": c["vy"][found], "vz": c["vz"][found],
            "origin": np.full(found.sum(), SIGNAL),
        }
        pileup = self._extra_tracks(jets, m.pileup_tracks_per_vertex * jets["npv"], PILEUP)
        fakes = self._extra_tracks(jets, m.fake_tracks + m.fake_tracks_per_vertex * jets["npv"], FAKE)
        tracks = _concat(signal, pileup, fakes)
        tracks = _take(tracks, np.argsort(tracks["jet"], kind="stable"))

        # momentum measurement
        pt_true = np.hypot(tracks["px"], tracks["py"])
        scale = 1 + np.hypot(m.pt_resolution, m.pt_resolution_curvature * pt_true) * rng.standard_normal(len(pt_true))
        for k in ("px", "py", "pz"):
            tracks[k] = tracks[k] * scale
        self._measure_impact_parameters(tracks, jets)
        self._add_relative_kinematics(tracks, jets, PION_MASS)
        self._identify_leptons(tracks)
        return tracks

    def _extra_tracks(self, jets, mean_per_jet, origin) -> dict[str, np.ndarray]:
        """Pileup or fake tracks, uniform inside the jet cone with a soft pt spectrum."""
        rng, m = self.rng, self.model
        n = rng.poisson(mean_per_jet)
        jet = np.repeat(np.arange(len(n)), n)
        eta, phi = _uniform_in_cone(rng, jets["eta"][jet], jets["phi"][jet])
        pt = m.track_pt_min + rng.exponential(0.8 if origin == PILEUP else 1.2, len(jet))
        px, py, pz = _momentum(pt, eta, phi)
        if origin == PILEUP:
            d0 = rng.normal(0, m.ip_xy_floor, len(jet))
            z0 = rng.normal(0, m.pileup_dz_width, len(jet))
        else:
            d0 = rng.normal(0, m.fake_track_ip_width, len(jet))
            z0 = rng.normal(0, 3 * m.fake_track_ip_width, len(jet))
        # A straight line with transverse impact parameter d0 passes through d0 * n_hat.
        n_hat_x, n_hat_y = py / pt, -px / pt
        return {
            "jet": jet, "pdg_id": np.full(len(jet), 211), "charge": rng.choice([-1.0, 1.0], len(jet)),
            "px": px, "py": py, "pz": pz,
            "vx": d0 * n_hat_x, "vy": d0 * n_hat_y, "vz": z0,
            "origin": np.full(len(jet), origin),
        }

    def _measure_impact_parameters(self, tracks, jets) -> None:
        rng, m = self.rng, self.model
        jet = tracks["jet"]
        px, py, pz = tracks["px"], tracks["py"], tracks["pz"]
        pt = np.hypot(px, py)
        p = np.sqrt(pt**2 + pz**2)
        ux, uy, uz = px / p, py / p, pz / p
        sin_theta = pt / p
        n_hat_x, n_hat_y = py / pt, -px / pt
        pv = jets["pv"][jet]
        vx, vy, vz = tracks["vx"] - pv[:, 0], tracks["vy"] - pv[:, 1], tracks["vz"] - pv[:, 2]
        d_xy = vx * n_hat_x + vy * n_hat_y
        z0 = vz - (vx * px + vy * py) / pt * pz / pt

        scattering = p * sin_theta**1.5
        sigma_xy = np.hypot(m.ip_xy_floor, m.ip_xy_scattering / scattering)
        sigma_z = np.hypot(m.ip_z_floor, m.ip_z_scattering / scattering) / np.sqrt(sin_theta)
        residual_xy = _residuals(rng, len(pt), m)
        d_xy = d_xy + sigma_xy * residual_xy
        z0 = z0 + sigma_z * _residuals(rng, len(pt), m)

        axis = jets["axis"][jet]
        sign_2d = np.where(d_xy * (n_hat_x * axis[:, 0] + n_hat_y * axis[:, 1]) >= 0, 1.0, -1.0)
        # point of closest approach to the primary vertex in 3D, for a straight line
        along = z0 * uz
        pca = np.stack([d_xy * n_hat_x - along * ux, d_xy * n_hat_y - along * uy, z0 - along * uz], axis=1)
        ip_3d = np.linalg.norm(pca, axis=1)
        sign_3d = np.where(np.einsum("ij,ij->i", pca, axis) >= 0, 1.0, -1.0)
        z_term = z0 * sin_theta**2
        sigma_3d = np.sqrt((d_xy**2 * sigma_xy**2 + z_term**2 * sigma_z**2 + sigma_xy**2 * sigma_xy**2)
                           / (d_xy**2 + (z0 * sin_theta) ** 2 + sigma_xy**2))

        direction = np.stack([ux, uy, uz], axis=1)
        cross = np.cross(direction, axis)
        cross_norm = np.maximum(np.linalg.norm(cross, axis=1), 1e-9)
        tracks["sip2d_val"] = sign_2d * np.abs(d_xy)
        tracks["sip2d_sig"] = tracks["sip2d_val"] / sigma_xy
        tracks["sip3d_val"] = sign_3d * ip_3d
        tracks["sip3d_sig"] = tracks["sip3d_val"] / sigma_3d
        tracks["dz"] = z0
        tracks["dz_sig"] = z0 / sigma_z
        # CMS stores the track-to-jet-axis distance as a non-positive number
        tracks["jet_dist"] = -np.abs(np.einsum("ij,ij->i", pca, cross)) / cross_norm

        # badly measured tracks tend to have poor fits
        tail = np.abs(residual_xy) > 3
        fake = tracks["origin"] == FAKE
        ndof = 10
        chi2 = rng.chisquare(ndof, len(pt)) * np.where(fake, 2.5, np.where(tail, 1.3, 1.0))
        tracks["normchi2"] = chi2 / ndof
        high_purity = rng.random(len(pt)) < np.where(fake, 0.35, 0.95)
        tracks["quality"] = np.where(high_purity, 2, np.where(rng.random(len(pt)) < 0.5, 1, 0))
        dz_sig = np.abs(tracks["dz_sig"])
        tracks["vertex_association"] = np.select([dz_sig < 3, dz_sig < 6, np.abs(z0) < 1.0], [7, 6, 5], 1)
        tracks["puppi_weight"] = (tracks["vertex_association"] >= 5).astype(np.float64)

    def _add_relative_kinematics(self, cands, jets, mass) -> None:
        """Momentum relative to the jet axis, shared by charged and neutral candidates."""
        jet = cands["jet"]
        px, py, pz = cands["px"], cands["py"], cands["pz"]
        kin = kinematics(px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + mass**2))
        cands["pt"], cands["eta"], cands["phi"], cands["p"] = kin["pt"], kin["eta"], kin["phi"], kin["p"]
        cands["energy"] = np.sqrt(kin["p"] ** 2 + mass**2)
        axis = jets["axis"][jet]
        p_par = px * axis[:, 0] + py * axis[:, 1] + pz * axis[:, 2]
        cands["p_par"] = p_par
        cands["p_par_ratio"] = p_par / kin["p"]
        cands["pt_rel"] = np.sqrt(np.maximum(kin["p"] ** 2 - p_par**2, 0.0))
        cands["eta_rel"] = 0.5 * np.log(np.maximum(kin["p"] + p_par, 1e-9) / np.maximum(kin["p"] - p_par, 1e-9))
        cands["delta_r"] = delta_r(kin["eta"], kin["phi"], jets["eta"][jet], jets["phi"][jet])
        cands["pt_ratio"] = kin["pt"] / jets["reco_pt"][jet]

    def _identify_leptons(self, tracks) -> None:
        rng, m = self.rng, self.model
        abs_id = np.abs(tracks["pdg_id"])
        pt = tracks["pt"]
        draw = rng.random(len(pt))
        misid = rng.random(len(pt)) < m.lepton_misid
        tracks["is_muon"] = (((abs_id == 13) & (draw < m.muon_efficiency)) | misid) & (pt > m.muon_pt_min)
        tracks["is_electron"] = ((((abs_id == 11) & (draw < m.electron_efficiency)) | misid)
                                 & (pt > m.electron_pt_min) & ~tracks["is_muon"])

    # -- neutrals ------------------------------------------------------------------------

    def _neutrals(self, table: JetTable, jets) -> dict[str, np.ndarray]:
        rng, m = self.rng, self.model
        c = table.constituents
        neutral = c["charge"] == 0
        photon = neutral & (c["pdg_id"] == 22)
        hadron = neutral & ~photon
        n_pileup = rng.poisson(m.pileup_photons_per_vertex * jets["npv"])
        pu_jet = np.repeat(np.arange(len(n_pileup)), n_pileup)
        pu_eta, pu_phi = _uniform_in_cone(rng, jets["eta"][pu_jet], jets["phi"][pu_jet])
        pu_pt = 0.3 + rng.exponential(0.8, len(pu_jet))
        pu_px, pu_py, pu_pz = _momentum(pu_pt, pu_eta, pu_phi)

        jet = np.concatenate([c["jet"][photon | hadron], pu_jet])
        px = np.concatenate([c["px"][photon | hadron], pu_px])
        py = np.concatenate([c["py"][photon | hadron], pu_py])
        pz = np.concatenate([c["pz"][photon | hadron], pu_pz])
        is_photon = np.concatenate([photon[photon | hadron], np.ones(len(pu_jet), bool)])
        origin = np.concatenate([np.full((photon | hadron).sum(), SIGNAL), np.full(len(pu_jet), PILEUP)])

        energy = np.sqrt(px**2 + py**2 + pz**2)
        stochastic = np.where(is_photon, m.photon_stochastic, m.hadron_stochastic)
        constant = np.where(is_photon, m.photon_constant, m.hadron_constant)
        resolution = np.hypot(stochastic / np.sqrt(np.maximum(energy, 1e-3)), constant)
        scale = np.clip(1 + resolution * rng.standard_normal(len(energy)), 0.0, None)
        kin = kinematics(px, py, pz, energy)
        blur = np.where(is_photon, 0.0, m.hadron_angular_resolution)
        eta = kin["eta"] + blur * rng.standard_normal(len(energy))
        phi = kin["phi"] + blur * rng.standard_normal(len(energy))
        measured_energy = energy * scale
        pt = measured_energy / np.cosh(eta)
        px, py, pz = _momentum(pt, eta, phi)
        keep = measured_energy > np.where(is_photon, m.photon_energy_min, m.hadron_energy_min)

        neutrals = {"jet": jet, "px": px, "py": py, "pz": pz, "is_photon": is_photon, "origin": origin}
        neutrals = _take(neutrals, keep)
        neutrals = _take(neutrals, np.argsort(neutrals["jet"], kind="stable"))
        self._add_relative_kinematics(neutrals, jets, 0.0)
        n = len(neutrals["jet"])
        neutrals["hadron_fraction"] = (~neutrals["is_photon"]).astype(np.float64)
        pileup_like = neutrals["origin"] == PILEUP
        neutrals["puppi_weight"] = np.where(pileup_like, rng.beta(1.2, 4.0, n), rng.beta(4.0, 1.2, n))
        return neutrals

    # -- secondary vertices --------------------------------------------------------------

    def _vertices(self, tracks, jets) -> dict[str, np.ndarray]:
        true_vertices = self._true_vertex_candidates(tracks, jets)
        fake_vertices = self._fake_vertex_candidates(tracks, jets)
        vertices = _concat(true_vertices, fake_vertices)
        vertices = self._measure_vertices(vertices, jets)
        order = np.lexsort((-vertices["dxy_sig"], vertices["jet"]))
        vertices = _take(vertices, order)
        return vertices

    def _vertex_from_tracks(self, member_vertex, member_track, n_vertices, tracks):
        """Summed four-momentum (pion hypothesis) of the tracks of each vertex."""
        def total(values):
            return np.bincount(member_vertex, weights=values[member_track], minlength=n_vertices)
        px, py, pz = total(tracks["px"]), total(tracks["py"]), total(tracks["pz"])
        energy = total(tracks["energy"])
        charge = total(tracks["charge"])
        n = np.bincount(member_vertex, minlength=n_vertices)
        return {"px": px, "py": py, "pz": pz, "energy": energy, "ntracks": n, "charge": charge}

    def _true_vertex_candidates(self, tracks, jets):
        rng, m = self.rng, self.model
        displaced = (tracks["origin"] == SIGNAL) & (
            np.sqrt(tracks["vx"] ** 2 + tracks["vy"] ** 2 + tracks["vz"] ** 2) > 1e-3)
        index = np.flatnonzero(displaced)
        key = np.stack([tracks["jet"][index].astype(np.float64),
                        np.round(tracks["vx"][index], 7), np.round(tracks["vy"][index], 7),
                        np.round(tracks["vz"][index], 7)], axis=1)
        vertex_of = np.unique(key, axis=0, return_inverse=True)[1].ravel()
        n_vertices = int(vertex_of.max()) + 1 if len(vertex_of) else 0
        summed = self._vertex_from_tracks(vertex_of, index, n_vertices, tracks)
        first = np.full(n_vertices, -1)
        first[vertex_of[::-1]] = index[::-1]
        position = np.stack([tracks["vx"][first], tracks["vy"][first], tracks["vz"][first]], axis=1) \
            if n_vertices else np.zeros((0, 3))
        ntracks = summed["ntracks"]
        flight_xy = np.hypot(position[:, 0], position[:, 1])
        plateau = np.select([ntracks == 2, ntracks == 3], [m.sv_efficiency_two_tracks, m.sv_efficiency_three_tracks],
                            m.sv_efficiency_many_tracks)
        efficiency = plateau * (1 - np.exp(-flight_xy / m.sv_flight_turn_on)) * np.where(flight_xy < m.sv_max_dxy, 1, 0.05)
        found = (ntracks >= 2) & (rng.random(n_vertices) < efficiency)
        found &= ~self._v0_vetoed(vertex_of, index, n_vertices, summed, tracks)
        jet_of_vertex = np.full(n_vertices, -1)
        jet_of_vertex[vertex_of] = tracks["jet"][index]
        out = {k: v[found] for k, v in summed.items()}
        out.update(jet=jet_of_vertex[found], position=position[found], fake=np.zeros(found.sum(), bool))
        return out

    def _v0_vetoed(self, vertex_of, index, n_vertices, summed, tracks) -> np.ndarray:
        """Two-track opposite-charge vertices compatible with K0S -> pi pi or Lambda -> p pi."""
        rng, m = self.rng, self.model
        two_track = (summed["ntracks"] == 2) & (summed["charge"] == 0)
        p = np.sqrt(summed["px"] ** 2 + summed["py"] ** 2 + summed["pz"] ** 2)
        m_pipi = np.sqrt(np.maximum(summed["energy"] ** 2 - p**2, 0))
        # Lambda hypothesis: the harder track is the proton.
        track_p = tracks["p"][index]
        harder = np.zeros(n_vertices)
        np.maximum.at(harder, vertex_of, track_p)
        e_lambda = summed["energy"] - np.sqrt(harder**2 + PION_MASS**2) + np.sqrt(harder**2 + PROTON_MASS**2)
        m_ppi = np.sqrt(np.maximum(e_lambda**2 - p**2, 0))
        compatible = (np.abs(m_pipi - K0S_MASS) < 0.03) | (np.abs(m_ppi - LAMBDA_MASS) < 0.01)
        return two_track & compatible & (rng.random(n_vertices) < m.v0_veto_efficiency)

    def _fake_vertex_candidates(self, tracks, jets):
        rng, m = self.rng, self.model
        n_jets = len(jets["pt"])
        n_tracks = np.bincount(tracks["jet"], minlength=n_jets)
        probability = np.clip(m.fake_sv + m.fake_sv_per_vertex * jets["npv"] + m.fake_sv_per_track * n_tracks, 0, 0.5)
        chosen_jets = np.flatnonzero((n_tracks >= 2) & (rng.random(n_jets) < probability))
        k = np.minimum(np.where(rng.random(len(chosen_jets)) < 0.3, 3, 2), n_tracks[chosen_jets])
        # random tracks of each chosen jet: the first k after a random shuffle within the jet
        shuffle = np.lexsort((rng.random(len(tracks["jet"])), tracks["jet"]))
        starts = _group_starts(tracks["jet"], n_jets)
        rank = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
        member_vertex = np.repeat(np.arange(len(chosen_jets)), k)
        member_track = shuffle[starts[chosen_jets][member_vertex] + rank]
        summed = self._vertex_from_tracks(member_vertex, member_track, len(chosen_jets), tracks)
        flight = rng.exponential(m.fake_sv_flight, len(chosen_jets))
        axis = jets["axis"][chosen_jets]
        position = axis * flight[:, None] + rng.normal(0, 0.1, (len(chosen_jets), 3))
        summed.update(jet=chosen_jets, position=position, fake=np.ones(len(chosen_jets), bool))
        return summed

    def _measure_vertices(self, vertices, jets):
        rng, m = self.rng, self.model
        n = len(vertices["jet"])
        ntracks = vertices["ntracks"]
        shrink = 1 / np.sqrt(np.maximum(ntracks - 1, 1))
        sigma_xy = m.sv_resolution_xy * shrink
        sigma_z = m.sv_resolution_z * shrink
        position = vertices["position"] + np.stack(
            [sigma_xy * _residuals(rng, n, m), sigma_xy * _residuals(rng, n, m), sigma_z * _residuals(rng, n, m)], axis=1)
        flight = position - jets["pv"][vertices["jet"]]
        dxy = np.hypot(flight[:, 0], flight[:, 1])
        d3d = np.linalg.norm(flight, axis=1)
        sigma_3d = np.sqrt((sigma_xy * dxy) ** 2 + (sigma_z * flight[:, 2]) ** 2) / np.maximum(d3d, 1e-9)
        sigma_3d = np.maximum(sigma_3d, sigma_xy)
        momentum = np.stack([vertices["px"], vertices["py"], vertices["pz"]], axis=1)
        p = np.linalg.norm(momentum, axis=1)
        kin = kinematics(vertices["px"], vertices["py"], vertices["pz"], vertices["energy"])
        jet = vertices["jet"]
        ndof = 2 * ntracks - 3
        chi2 = rng.chisquare(np.maximum(ndof, 1), n) * np.where(vertices["fake"], 2.0, 1.0)
        out = {
            "jet": jet, "fake": vertices["fake"], "ntracks": ntracks,
            "pt": kin["pt"], "eta": kin["eta"], "phi": kin["phi"], "mass": kin["mass"],
            "energy": vertices["energy"],
            "dxy": dxy, "dxy_sig": dxy / sigma_xy, "d3d": d3d, "d3d_sig": d3d / sigma_3d,
            "cos_theta": np.einsum("ij,ij->i", flight, momentum) / np.maximum(d3d * p, 1e-12),
            "delta_r": delta_r(kin["eta"], kin["phi"], jets["eta"][jet], jets["phi"][jet]),
            "energy_ratio": vertices["energy"] / jets["reco_energy"][jet],
            "chi2": chi2, "normchi2": chi2 / np.maximum(ndof, 1),
        }
        selected = (out["dxy_sig"] > m.sv_min_dxy_significance) & (dxy < m.sv_max_dxy) & (out["cos_theta"] > 0)
        return _take(out, selected)

    def _add_vertex_distances(self, cands, vertices, jets) -> None:
        """Smallest dR between each candidate and a secondary vertex of its jet (0.4 if none)."""
        n_jets = len(jets["pt"])
        starts = _group_starts(vertices["jet"], n_jets)
        counts = np.bincount(vertices["jet"], minlength=n_jets)
        best = np.full(len(cands["jet"]), 0.4)
        for rank in range(int(counts.max()) if len(counts) else 0):
            has = counts[cands["jet"]] > rank
            v = starts[cands["jet"][has]] + rank
            dr = delta_r(cands["eta"][has], cands["phi"][has], vertices["eta"][v], vertices["phi"][v])
            best[has] = np.minimum(best[has], dr)
        cands["drmin_sv"] = best

    # -- CSV-style jet variables ---------------------------------------------------------

    def _csv_variables(self, tracks, vertices, jets) -> dict[str, np.ndarray]:
        """The jet-level track variables of the CSV tagger that DeepJet takes as globals."""
        n_jets = len(jets["pt"])
        selected = ((tracks["pt"] > 1.0) & (np.abs(tracks["jet_dist"]) < 0.7)
                    & (np.abs(tracks["sip3d_val"]) < 50.0) & (tracks["delta_r"] < 0.3))
        sel = _take(tracks, selected)
        jet = sel["jet"]

        def total(values):
            return np.bincount(jet, weights=values, minlength=n_jets)

        sum_px, sum_py, sum_pz = total(sel["px"]), total(sel["py"]), total(sel["pz"])
        sum_pt = np.hypot(sum_px, sum_py)
        sum_eta = np.arcsinh(np.divide(sum_pz, sum_pt, out=np.zeros(n_jets), where=sum_pt > 0))
        sum_phi = np.arctan2(sum_py, sum_px)
        n_selected = np.bincount(jet, minlength=n_jets)
        out = {
            "csv_track_sum_et_ratio": total(sel["pt"]) / jets["reco_pt"],
            "csv_track_sum_delta_r": np.where(n_selected > 0, delta_r(sum_eta, sum_phi, jets["eta"], jets["phi"]), 0.0),
            "csv_vertex_category": np.where(np.bincount(vertices["jet"], minlength=n_jets) > 0, 0, 2),
            "csv_n_selected_tracks": n_selected,
            # tracks close to a secondary vertex: those CSV computes etaRel for
            "csv_n_tracks_eta_rel": np.bincount(tracks["jet"][tracks["drmin_sv"] < 0.1], minlength=n_jets),
        }
        for dim in ("2d", "3d"):
            val, sig = self._above_charm(sel, n_jets, f"sip{dim}_sig", f"sip{dim}_val")
            out[f"csv_sip{dim}_val_above_charm"] = val
            out[f"csv_sip{dim}_sig_above_charm"] = sig
        return out

    @staticmethod
    def _above_charm(tracks, n_jets, sort_key, value_key):
        """IP of the first track (by decreasing significance) lifting the track mass above 1.5 GeV."""
        order = np.lexsort((-tracks[sort_key], tracks["jet"]))
        jet = tracks["jet"][order]
        starts = _group_starts(jet, n_jets)
        running = {}
        for k in ("px", "py", "pz", "energy"):
            cumulative = np.cumsum(tracks[k][order])
            before = np.concatenate([[0.0], cumulative])[starts[jet]]
            running[k] = cumulative - before
        mass2 = running["energy"] ** 2 - running["px"] ** 2 - running["py"] ** 2 - running["pz"] ** 2
        above = mass2 > CHARM_MASS_THRESHOLD**2
        first = np.full(n_jets, -1)
        hits = np.flatnonzero(above)
        first[jet[hits][::-1]] = hits[::-1]
        found = first >= 0
        value = np.full(n_jets, -1.0)
        significance = np.full(n_jets, -1.0)
        value[found] = tracks[value_key][order][first[found]]
        significance[found] = tracks[sort_key][order][first[found]]
        return value, significance
