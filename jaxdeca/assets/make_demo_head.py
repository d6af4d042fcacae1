"""Generates the embedded demo head: a procedural head in the exact FLAME layout.

    python -m jaxdeca.assets.make_demo_head [--out jaxdeca/assets/demo_head.npz]

The head is a closed surface on a latitude/longitude grid, denser over the face, around an
ellipsoid deformed by smooth bumps (forehead, brow ridge, eye sockets, nose, cheeks, lips,
chin, ears, a narrower jaw and a neck). The lip line is one grid row: rows above it are
skinned to the head, rows below to the jaw joint, so opening the jaw opens the mouth.
Everything FLAME has is here, hand-designed rather than learnt: identity modes that change
proportions, expression modes that move brows, lids, mouth corners and lips, pose
correctives, five joints with a regressor and skinning weights, a UV layout with the face in
the middle, face/eye UV masks, a 68-point landmark embedding with a 79-row dynamic contour
table (DECA's yaw convention), and an albedo basis in the official BGR order.

Deterministic: the same seed gives the same arrays. The shipped file holds float32 arrays;
the large bases are rounded to float16 precision so that it compresses to ~2 MB.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from jaxdeca.flame import io

N_LAT, N_LON = 58, 84  # grid rows (excluding poles) and columns
RADII = np.array([0.077, 0.112, 0.094])  # half width, half height, half depth (metres)
CENTER = np.array([0.0, 0.012, -0.012])
THETA_C = np.pi / 2 + 0.2  # latitude of the face centre (below the equator: the face is low on the head)
UV_SIZE = 256
TEX = 64  # albedo resolution
N_SHAPE, N_EXP, N_TEX = 100, 50, 50


# ----------------------------------------------------------------------------- parametrisation

def _warped(n, lo, hi, centre, width, boost, endpoint):
    """n samples in [lo, hi] spaced densely around `centre` (inverse CDF of a bumped density)."""
    x = np.linspace(lo, hi, 4001)
    dens = 1.0 + boost * np.exp(-((x - centre) / width) ** 2)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(x))])
    cdf /= cdf[-1]
    s = np.linspace(0.0, 1.0, n + (1 if endpoint else 2))
    if not endpoint:
        s = s[1:-1]
    return np.interp(s, cdf, x)


def grid_angles():
    """theta [N_LAT] (0 = top pole, pi = bottom), phi [N_LON] (0 = front, +x = subject's left)."""
    theta = _warped(N_LAT, 0.0, np.pi, THETA_C, 0.45, 4.0, endpoint=False)
    phi = _warped(N_LON, -np.pi, np.pi, 0.0, 0.7, 3.0, endpoint=True)[:-1]
    return theta, phi


def _g(x, p=0.62):
    return np.sign(x) * np.abs(x) ** p


def uv_of(phi, theta):
    """UV in [0,1] (v up) of surface angles: the face stretched over the middle of the square."""
    u = 0.5 + 0.5 * _g(phi / np.pi)
    dv = np.where(theta < THETA_C, (theta - THETA_C) / THETA_C, (theta - THETA_C) / (np.pi - THETA_C))
    return np.stack([u, 0.5 - 0.5 * _g(dv)], -1)


def angles_of_uv(u, v):
    phi = np.pi * _g(2 * u - 1, 1 / 0.62)
    dv = _g(1 - 2 * v, 1 / 0.62)
    theta = np.where(dv < 0, THETA_C + dv * THETA_C, THETA_C + dv * (np.pi - THETA_C))
    return phi, theta


def _bump(phi, dv, p0, v0, sp, sv):
    return np.exp(-(((phi - p0) / sp) ** 2) - ((dv - v0) / sv) ** 2)


def _sstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ----------------------------------------------------------------------------- geometry

class Head:
    """The procedural template and the per-vertex feature fields used by all bases."""

    def __init__(self, lip_row_v=0.42):
        theta, phi = grid_angles()
        # The lip line: the grid row nearest lip_row_v below the face centre.
        self.lip_row = int(np.argmin(np.abs(theta - THETA_C - lip_row_v)))
        TH, PH = np.meshgrid(theta, phi, indexing="ij")
        self.theta = np.concatenate([[0.0], TH.ravel(), [np.pi]])
        self.phi = np.concatenate([[0.0], PH.ravel(), [0.0]])
        self.theta_rows, self.phi_cols = theta, phi
        self.V = self.theta.size
        self.dv = self.theta - THETA_C  # vertical face coordinate, + downwards
        self.v_lip = theta[self.lip_row]  # absolute theta of the upper lip line
        self.v_template = self.surface(self.radial_offsets())
        self.faces = self._faces()

    def direction(self):
        t, p = self.theta, self.phi
        return np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], -1)

    def radial_offsets(self):
        ph, dv = self.phi, self.dv
        lip = self.v_lip - THETA_C
        front = np.cos(np.clip(ph, -np.pi / 2, np.pi / 2)) ** 2
        r = np.zeros(self.V)
        r += 0.035 * _bump(ph, dv, 0.0, -0.55, 0.7, 0.25)  # forehead
        r += 0.045 * (_bump(ph, dv, -0.33, -0.24, 0.2, 0.07) + _bump(ph, dv, 0.33, -0.24, 0.2, 0.07))  # brow ridge
        r -= 0.075 * (_bump(ph, dv, -0.36, -0.07, 0.15, 0.085) + _bump(ph, dv, 0.36, -0.07, 0.15, 0.085))  # sockets
        r += 0.03 * (_bump(ph, dv, -0.36, -0.07, 0.09, 0.05) + _bump(ph, dv, 0.36, -0.07, 0.09, 0.05))  # eyeball bulge
        r += 0.10 * _bump(ph, dv, 0.0, 0.02, 0.06, 0.2)  # nose bridge
        r += 0.16 * _bump(ph, dv, 0.0, 0.16, 0.085, 0.075)  # nose tip
        r += 0.05 * (_bump(ph, dv, -0.09, 0.2, 0.06, 0.05) + _bump(ph, dv, 0.09, 0.2, 0.06, 0.05))  # nostril wings
        r -= 0.03 * _bump(ph, dv, 0.0, 0.25, 0.05, 0.02)  # under the nose
        r += 0.04 * (_bump(ph, dv, -0.55, 0.12, 0.22, 0.14) + _bump(ph, dv, 0.55, 0.12, 0.22, 0.14))  # cheekbones
        r += 0.05 * _bump(ph, dv, 0.0, lip - 0.035, 0.2, 0.035)  # upper lip
        r += 0.05 * _bump(ph, dv, 0.0, lip + 0.05, 0.19, 0.035)  # lower lip
        r -= 0.03 * _bump(ph, dv, 0.0, lip + 0.008, 0.24, 0.012)  # lip crease
        r -= 0.02 * _bump(ph, dv, 0.0, lip + 0.13, 0.2, 0.04)  # chin groove
        r += 0.07 * _bump(ph, dv, 0.0, lip + 0.25, 0.2, 0.08)  # chin
        r += 0.10 * (_bump(ph, dv, -1.55, -0.05, 0.1, 0.2) + _bump(ph, dv, 1.55, -0.05, 0.1, 0.2))  # ears
        # Narrower lower face (jaw) and neck.
        jaw = _sstep((dv - 0.15) / 0.6) * (1 - 0.6 * front)
        r -= 0.14 * jaw
        neck = _sstep((dv - 0.95) / 0.35)
        r -= 0.33 * neck
        return r

    def surface(self, r):
        d = self.direction()
        p = CENTER + (1.0 + r)[:, None] * d * RADII
        # Flatten the face a little (a head is flatter in front than an ellipsoid).
        p[:, 2] -= 0.012 * np.maximum(d[:, 2], 0) ** 4
        return p.astype(np.float64)

    def _faces(self):
        n_lat, n_lon = N_LAT, N_LON
        idx = 1 + np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
        f = []
        top, bottom = 0, self.V - 1
        for j in range(n_lon):
            j2 = (j + 1) % n_lon
            f.append([top, idx[0, j], idx[0, j2]])
            f.append([bottom, idx[-1, j2], idx[-1, j]])
        for i in range(n_lat - 1):
            for j in range(n_lon):
                j2 = (j + 1) % n_lon
                a, b, c, d = idx[i, j], idx[i, j2], idx[i + 1, j], idx[i + 1, j2]
                f.append([a, c, b])
                f.append([b, c, d])
        f = np.asarray(f, np.int64)
        # Orient outward (the signed volume of a closed mesh is positive when outward).
        v = self.surface(self.radial_offsets())
        vol = np.einsum("fc,fc->f", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum()
        return f if vol > 0 else f[:, [0, 2, 1]]

    def normals(self, verts=None):
        v = self.v_template if verts is None else verts
        f = self.faces
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        n = np.zeros_like(v)
        for k in range(3):
            np.add.at(n, f[:, k], fn)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def grid_index(self, row, col):
        return 1 + row * N_LON + (col % N_LON)


# ----------------------------------------------------------------------------- skinning

def skinning(h: Head):
    ph, dv, th = h.phi, h.dv, h.theta
    lip = h.v_lip - THETA_C
    aph = np.abs(ph)
    # Jaw: below the lip line at the mouth, the boundary rising towards the ears on the sides.
    boundary = lip + 0.004 - np.maximum(aph - 0.26, 0.0) * 0.45
    width = 0.002 + 0.1 * _sstep((aph - 0.26) / 0.5)
    below_lip = th > h.v_lip + 1e-9
    w_jaw = np.where(aph < 0.26, below_lip.astype(float), _sstep((dv - boundary) / np.maximum(width, 1e-6) * 0.5 + 0.5))
    w_jaw *= _sstep((1.4 - aph) / 0.3) * (1 - _sstep((dv - 0.8) / 0.25))
    w_neck_base = _sstep((dv - 1.0) / 0.4)  # lower neck follows the global joint only
    w = np.zeros((h.V, 5))
    w[:, 2] = w_jaw
    w[:, 0] = (1 - w_jaw) * w_neck_base
    w[:, 1] = (1 - w_jaw) * (1 - w_neck_base)
    return w


def joint_regressor(h: Head):
    """[5, V]: each joint is the mean of a ring of template vertices around it."""
    v = h.v_template
    J = np.zeros((5, h.V))

    def ring(mask):
        m = mask.astype(float)
        return m / m.sum()

    J[0] = ring(np.abs(h.dv - 1.25) < 0.05)  # base of the neck (root)
    J[1] = ring(np.abs(h.dv - 0.95) < 0.05)  # neck
    J[2] = ring((np.abs(h.dv - 0.2) < 0.08) & (np.abs(np.abs(h.phi) - 1.45) < 0.12))  # jaw hinge, below the ears
    for k, side in ((3, 1.0), (4, -1.0)):  # 3 = left eye (+x), 4 = right eye
        J[k] = ring(np.hypot((h.phi - side * 0.36) / 0.16, (h.dv + 0.07) / 0.09) < 1.0)
    del v
    return J


# ----------------------------------------------------------------------------- bases

def _mirror_pairs(h: Head):
    """Index of each vertex's mirror image (x -> -x) on the grid."""
    rows = np.clip(np.round((np.arange(h.V) - 1) // N_LON), 0, N_LAT - 1).astype(int)
    cols = (np.arange(h.V) - 1) % N_LON
    # phi grid is symmetric: col j <-> col (N_LON - j) mod N_LON (phi_cols[0] = -pi = pi).
    mir = 1 + rows * N_LON + (-cols) % N_LON
    mir[0], mir[-1] = 0, h.V - 1
    return mir


def identity_basis(h: Head, rng):
    v, n = h.v_template, h.normals()
    ph, dv = h.phi, h.dv
    lip = h.v_lip - THETA_C
    rel = v - CENTER
    face = _bump(ph, dv, 0.0, 0.2, 0.9, 0.6)
    lower = _sstep((dv - 0.1) / 0.5)
    modes = [
        rel * [0.06, 0.0, 0.0],  # head/face width
        np.stack([0 * ph, rel[:, 1] * 0.06 * lower + 0.004 * lower, 0 * ph], -1) * [0, 1, 0],  # face length
        n * (0.006 * _bump(ph, dv, 0.0, 0.12, 0.09, 0.12))[:, None],  # nose protrusion
        rel * [0.07, 0, 0] * lower[:, None],  # jaw width
        n * (0.005 * _bump(ph, dv, 0.0, -0.6, 0.8, 0.25))[:, None],  # forehead
        np.stack([np.sign(ph) * 0.004 * (_bump(ph, dv, -0.36, -0.07, 0.2, 0.12) + _bump(ph, dv, 0.36, -0.07, 0.2, 0.12)), 0 * ph, 0 * ph], -1),  # eye spacing
        n * (0.0025 * _bump(ph, dv, 0.0, lip, 0.2, 0.06))[:, None],  # lip fullness
        n * (0.006 * _bump(ph, dv, 0.0, lip + 0.25, 0.2, 0.1))[:, None],  # chin
        n * (0.004 * (_bump(ph, dv, -0.55, 0.1, 0.2, 0.12) + _bump(ph, dv, 0.55, 0.1, 0.2, 0.12)))[:, None],  # cheekbones
        rel * [0, 0, 0.05],  # head depth
        np.stack([0 * ph, 0.005 * _bump(ph, dv, 0.0, 0.16, 0.1, 0.1), 0 * ph], -1),  # nose tip height
        n * (0.004 * _bump(ph, dv, 0.0, 0.2, 0.1, 0.05) * np.abs(ph) / 0.1)[:, None],  # nose width
    ]
    mir = _mirror_pairs(h)
    centres = rng.uniform([-1.2, -0.8], [1.2, 1.0], size=(N_SHAPE - len(modes), 2))
    for k, (p0, v0) in enumerate(centres):
        amp = 0.004 / (1 + 0.05 * k)
        field = _bump(ph, dv, p0, v0, 0.35, 0.3)
        field = 0.5 * (field + field[mir]) if k % 3 else field  # mostly symmetric
        modes.append(n * (amp * field * (0.3 + face))[:, None])
    return np.stack(modes[:N_SHAPE], -1)  # [V, 3, N_SHAPE]


def expression_basis(h: Head, rng):
    v, n = h.v_template, h.normals()
    ph, dv = h.phi, h.dv
    lip = h.v_lip - THETA_C
    up = np.array([0.0, 1.0, 0.0])
    z = np.zeros(h.V)
    brows = _bump(ph, dv, -0.33, -0.26, 0.22, 0.1) + _bump(ph, dv, 0.33, -0.26, 0.22, 0.1)
    inner_brows = _bump(ph, dv, -0.15, -0.26, 0.1, 0.1) + _bump(ph, dv, 0.15, -0.26, 0.1, 0.1)
    upper_lids = _bump(ph, dv, -0.36, -0.1, 0.12, 0.035) + _bump(ph, dv, 0.36, -0.1, 0.12, 0.035)
    lower_lids = _bump(ph, dv, -0.36, -0.02, 0.12, 0.03) + _bump(ph, dv, 0.36, -0.02, 0.12, 0.03)
    corners = _bump(ph, dv, -0.25, lip, 0.1, 0.07) + _bump(ph, dv, 0.25, lip, 0.1, 0.07)
    cheeks = _bump(ph, dv, -0.5, 0.2, 0.2, 0.15) + _bump(ph, dv, 0.5, 0.2, 0.2, 0.15)
    lips = _bump(ph, dv, 0.0, lip, 0.22, 0.07)
    upper_lip = _bump(ph, dv, 0.0, lip - 0.03, 0.2, 0.04)
    lower_lip = _bump(ph, dv, 0.0, lip + 0.05, 0.2, 0.04)
    sx = np.sign(ph)
    modes = [
        up * (0.006 * brows)[:, None],  # 0 brows raise
        (up * -0.004 + 0.0) * brows[:, None] + np.stack([-sx * 0.002 * brows, z, z], -1),  # 1 frown
        up * (-0.008 * upper_lids)[:, None],  # 2 eyes close
        (up * 0.005 + np.stack([sx * 0.004, z, z], -1)) * corners[:, None] + (up * 0.003) * cheeks[:, None],  # 3 smile
        up * (-0.005 * corners)[:, None],  # 4 corners down
        np.stack([-sx * 0.004 * lips, z, 0.005 * lips], -1),  # 5 pucker
        np.stack([sx * 0.006 * corners, z, z], -1),  # 6 stretch
        n * (0.006 * cheeks)[:, None],  # 7 cheek puff
        up * (0.004 * upper_lip)[:, None],  # 8 upper lip raise
        up * (-0.004 * lower_lip)[:, None],  # 9 lower lip down
        up * (0.003 * _bump(ph, dv, 0.0, 0.08, 0.12, 0.06))[:, None],  # 10 nose wrinkle
        up * (0.006 * (ph > 0) * corners)[:, None],  # 11 half smile (left)
        up * (0.006 * (ph < 0) * corners)[:, None],  # 12 half smile (right)
        up * (0.005 * inner_brows)[:, None],  # 13 inner brows raise
        up * (0.004 * lower_lids)[:, None],  # 14 squint
        up * (-0.004 * _bump(ph, dv, 0.0, lip + 0.2, 0.25, 0.15))[:, None],  # 15 chin down
    ]
    del v
    centres = rng.uniform([-0.7, -0.4], [0.7, 0.8], size=(N_EXP - len(modes), 2))
    dirs = rng.normal(size=(N_EXP - len(modes), 3))
    for k, ((p0, v0), d) in enumerate(zip(centres, dirs)):
        field = _bump(ph, dv, p0, v0, 0.15, 0.1) * (0.003 / (1 + 0.05 * k))
        modes.append(d / np.linalg.norm(d) * field[:, None])
    return np.stack(modes[:N_EXP], -1)


def pose_correctives(h: Head):
    """[V, 3, 36]: jaw opening bulges the cheeks and stretches the chin; neck pitch folds the throat."""
    n = h.normals()
    ph, dv = h.phi, h.dv
    P = np.zeros((h.V, 3, 36))
    cheeks = _bump(ph, dv, -0.6, 0.35, 0.25, 0.15) + _bump(ph, dv, 0.6, 0.35, 0.25, 0.15)
    throat = _bump(ph, dv, 0.0, 0.95, 0.6, 0.15)
    # feature index = 9 * (joint - 1) + 3 * row + col of (R - I); jaw = joint 2, neck = joint 1.
    # For a rotation about x, R[2,1] = sin, R[1,2] = -sin: split the effect between the two.
    for base, field, amp in ((9, cheeks, 0.004), (0, throat, 0.006)):
        P[:, :, base + 7] += 0.5 * amp * field[:, None] * n
        P[:, :, base + 5] -= 0.5 * amp * field[:, None] * n
    return P


# ----------------------------------------------------------------------------- UVs and masks

def uv_layout(h: Head):
    """uv_coords [T, 2], uv_faces [F, 3] with the seam at the back and per-triangle pole UVs."""
    theta, phi = h.theta_rows, h.phi_cols
    uv_grid = uv_of(*np.meshgrid(phi, theta, indexing="xy"))  # [N_LAT, N_LON, 2]
    seam = uv_of(np.full(N_LAT, np.pi), theta)  # the phi = -pi column again, at u = 1
    uv = [uv_grid.reshape(-1, 2), seam]
    base_seam = N_LAT * N_LON
    pole_top = base_seam + N_LAT
    pole_bottom = pole_top + N_LON
    mids = 0.5 * (uv_of(phi, np.zeros(N_LON))[:, 0] + np.append(uv_of(phi[1:], np.zeros(N_LON - 1))[:, 0], 1.0))
    uv.append(np.stack([mids, np.ones(N_LON)], -1))
    uv.append(np.stack([mids, np.zeros(N_LON)], -1))
    uv = np.concatenate(uv, 0)

    def tid(vid, col_next_wrap):
        """UV index of grid vertex `vid` (1-based grid id) used with a wrapped neighbour column."""
        g = vid - 1
        row, col = divmod(g, N_LON)
        if col == 0 and col_next_wrap:
            return base_seam + row
        return g

    uv_faces = []
    for f in h.faces:
        cols = [((x - 1) % N_LON) if 0 < x < h.V - 1 else None for x in f]
        wraps = any(c == N_LON - 1 for c in cols if c is not None) and any(c == 0 for c in cols if c is not None)
        tri = []
        for x in f:
            if x == 0 or x == h.V - 1:
                other = [c for c in cols if c is not None]
                j = max(other) if wraps else min(other)
                tri.append((pole_top if x == 0 else pole_bottom) + j)
            else:
                tri.append(tid(x, wraps))
        uv_faces.append(tri)
    return uv.astype(np.float32), np.asarray(uv_faces, np.int32)


def uv_masks():
    u, v = np.meshgrid((np.arange(UV_SIZE) + 0.5) / UV_SIZE, 1 - (np.arange(UV_SIZE) + 0.5) / UV_SIZE)
    ph, th = angles_of_uv(u, v)
    dv = th - THETA_C
    face = ((ph / 1.05) ** 2 + ((dv - 0.12) / 0.62) ** 2) < 1.0
    eyes = (np.hypot((np.abs(ph) - 0.36) / 0.14, (dv + 0.06) / 0.06) < 1.0)
    face_eye = face.astype(np.float32)
    face_only = (face & ~eyes).astype(np.float32)
    return face_eye, face_only


# ----------------------------------------------------------------------------- albedo (BGR, 0..1)

def albedo_model(rng, h: Head):
    u, v = np.meshgrid((np.arange(TEX) + 0.5) / TEX, 1 - (np.arange(TEX) + 0.5) / TEX)
    ph, th = angles_of_uv(u, v)
    dv = th - THETA_C
    lip = h.v_lip - THETA_C
    skin = np.array([0.52, 0.60, 0.80])  # BGR
    mean = np.broadcast_to(skin, (TEX, TEX, 3)).copy()
    lips = np.clip(_bump(ph, dv, 0.0, lip + 0.01, 0.2, 0.05) * 1.6, 0, 1)[..., None]
    mean = mean * (1 - lips) + np.array([0.40, 0.38, 0.72]) * lips
    brows = np.clip((_bump(ph, dv, -0.33, -0.27, 0.18, 0.035) + _bump(ph, dv, 0.33, -0.27, 0.18, 0.035)) * 1.5, 0, 1)[..., None]
    mean = mean * (1 - brows) + np.array([0.12, 0.16, 0.22]) * brows
    eye_white = np.clip((_bump(ph, dv, -0.36, -0.06, 0.085, 0.03) + _bump(ph, dv, 0.36, -0.06, 0.085, 0.03)) * 2.0, 0, 1)[..., None]
    mean = mean * (1 - eye_white) + np.array([0.88, 0.90, 0.92]) * eye_white
    iris = np.clip((_bump(ph, dv, -0.36, -0.06, 0.035, 0.025) + _bump(ph, dv, 0.36, -0.06, 0.035, 0.025)) * 2.0, 0, 1)[..., None]
    mean = mean * (1 - iris) + np.array([0.25, 0.22, 0.15]) * iris
    hair = _sstep((-dv - 0.75) / 0.2)[..., None] * 1.0 + _sstep((np.abs(ph) - 2.0) / 0.3)[..., None] * _sstep((-dv - 0.1) / 0.3)[..., None]
    hair = np.clip(hair, 0, 1)
    mean = mean * (1 - hair) + np.array([0.10, 0.14, 0.20]) * hair
    skinw = (1 - lips) * (1 - brows) * (1 - eye_white) * (1 - hair)
    modes = [
        skinw * 0.08 * np.ones(3),  # lightness
        skinw * np.array([-0.02, -0.01, 0.05]),  # redness
        skinw * np.array([-0.04, 0.02, 0.03]),  # yellow / olive
        brows * np.array([-0.05, -0.05, -0.06]),  # brow darkness
        lips * np.array([-0.03, -0.05, 0.05]),  # lip colour
        hair * np.array([0.06, 0.07, 0.08]),  # hair colour
        iris * np.array([0.15, 0.05, -0.05]),  # eye colour
    ]
    while len(modes) < N_TEX:
        k = len(modes)
        c = rng.uniform([-1.2, -0.8], [1.2, 0.9])
        blot = _bump(ph, dv, c[0], c[1], 0.3, 0.25)[..., None] * skinw
        modes.append(blot * rng.normal(size=3) * 0.02 / (1 + 0.05 * k))
    return mean.astype(np.float32), np.stack(modes, -1).astype(np.float32)


# ----------------------------------------------------------------------------- landmarks

def _lmk_angles(h: Head):
    """(phi, dv) of iBUG points 17..67 (static) and the frontal contour 0..16 is computed."""
    lip = h.v_lip - THETA_C
    lo = h.theta_rows[h.lip_row + 1] - THETA_C  # the row under the lip line (lower lip)
    pts = {}
    for k, t in enumerate(np.linspace(0, 1, 5)):  # brows: 17 outer right .. 21 inner right
        p = -0.6 + 0.45 * t
        pts[17 + k] = (p, -0.25 - 0.04 * np.sin(np.pi * t))
        pts[26 - k] = (-p, -0.25 - 0.04 * np.sin(np.pi * t))
    for k, d in enumerate((-0.1, -0.0, 0.08, 0.16)):  # nose bridge, 30 = tip
        pts[27 + k] = (0.0, d)
    for k, p in enumerate((-0.11, -0.055, 0.0, 0.055, 0.11)):
        pts[31 + k] = (p, 0.235)
    eye = [(-0.5, -0.065), (-0.42, -0.1), (-0.3, -0.1), (-0.22, -0.065), (-0.3, -0.035), (-0.42, -0.035)]
    for k, (p, d) in enumerate(eye):
        pts[36 + k] = (p, d)
    for k, idx in enumerate((45, 44, 43, 42, 47, 46)):  # mirror: 36->45, 37->44, 38->43, 39->42, 40->47, 41->46
        pts[idx] = (-eye[k][0], eye[k][1])
    outer = [(-0.25, lip + 0.004), (-0.16, lip - 0.03), (-0.06, lip - 0.045), (0.0, lip - 0.038), (0.06, lip - 0.045),
             (0.16, lip - 0.03), (0.25, lip + 0.004), (0.16, lip + 0.045), (0.06, lip + 0.065), (0.0, lip + 0.068),
             (-0.06, lip + 0.065), (-0.16, lip + 0.045)]
    for k, pd in enumerate(outer):
        pts[48 + k] = pd
    inner = [(-0.2, lip), (-0.08, lip), (0.0, lip), (0.08, lip), (0.2, lip), (0.08, lo), (0.0, lo), (-0.08, lo)]
    for k, pd in enumerate(inner):
        pts[60 + k] = pd
    return pts


def _locate(h: Head, phi, dv):
    """A face and barycentrics of the surface point at angles (phi, theta = THETA_C + dv)."""
    theta = THETA_C + dv
    rows, cols = h.theta_rows, h.phi_cols
    i = int(np.clip(np.searchsorted(rows, theta) - 1, 0, N_LAT - 2))
    j = int(np.clip(np.searchsorted(cols, phi) - 1, 0, N_LON - 1))
    j2 = (j + 1) % N_LON
    c1 = cols[j2] if j2 else np.pi
    s = (phi - cols[j]) / (c1 - cols[j])
    t = (theta - rows[i]) / (rows[i + 1] - rows[i])
    s, t = float(np.clip(s, 0, 1)), float(np.clip(t, 0, 1))
    a, b, c, d = (h.grid_index(i, j), h.grid_index(i, j2), h.grid_index(i + 1, j), h.grid_index(i + 1, j2))
    if s + t <= 1:
        tri, bary = (a, c, b), (1 - s - t, t, s)
    else:
        tri, bary = (b, c, d), (1 - t, 1 - s, s + t - 1)
    fid = _face_id(h, tri)
    order = [list(h.faces[fid]).index(x) for x in tri]
    bb = np.zeros(3)
    bb[order] = bary
    return fid, bb


def _face_id(h: Head, tri):
    key = frozenset(tri)
    if not hasattr(h, "_face_lookup"):
        h._face_lookup = {frozenset(f): k for k, f in enumerate(h.faces.tolist())}
    return h._face_lookup[key]


def _vertex_face(h: Head, vid):
    if not hasattr(h, "_vf"):
        h._vf = {}
        for k, f in enumerate(h.faces):
            for x in f:
                h._vf.setdefault(int(x), k)
    fid = h._vf[int(vid)]
    bb = (h.faces[fid] == vid).astype(np.float64)
    return fid, bb


def _rot_y(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def contour(h: Head, yaw_deg):
    """17 contour points (vertex ids) on the silhouette of the lower face after R_y(yaw)."""
    v = h.v_template @ _rot_y(yaw_deg).T
    n = h.normals() @ _rot_y(yaw_deg).T
    region = (np.abs(h.phi) < 1.35) & (h.dv > -0.02) & (h.dv < 0.76) & (n[:, 2] > -0.35)
    ids = np.nonzero(region)[0]
    out = []
    for k in range(17):
        ang = np.deg2rad(175.0 + k * (190.0 / 16))  # 175 deg (left, slightly up) .. 270 (down) .. 365 (right)
        d = np.array([np.cos(ang), np.sin(ang)])
        score = v[ids, 0] * d[0] + v[ids, 1] * d[1]
        out.append(ids[np.argmax(score)])
    return out


def landmarks(h: Head):
    pts = _lmk_angles(h)
    static_f, static_b = zip(*[_locate(h, *pts[k]) for k in range(17, 68)])
    dyn_f = np.zeros((79, 17), np.int64)
    dyn_b = np.zeros((79, 17, 3))
    for row in range(79):
        yaw = row if row <= 39 else -(row - 39)
        for k, vid in enumerate(contour(h, yaw)):
            dyn_f[row, k], dyn_b[row, k] = _vertex_face(h, vid)
    full_f = np.concatenate([dyn_f[0], np.asarray(static_f)])
    full_b = np.concatenate([dyn_b[0], np.asarray(static_b)])
    return dict(
        static_lmk_faces_idx=np.asarray(static_f, np.int32), static_lmk_bary_coords=np.asarray(static_b, np.float32),
        dynamic_lmk_faces_idx=dyn_f.astype(np.int32), dynamic_lmk_bary_coords=dyn_b.astype(np.float32),
        full_lmk_faces_idx=full_f.astype(np.int32), full_lmk_bary_coords=full_b.astype(np.float32))


# ----------------------------------------------------------------------------- assembly

def generate(seed: int = 0) -> dict:
    """All arrays of the demo head (float32 / int32, the CONTRIBUTING schema)."""
    rng = np.random.default_rng(seed)
    h = Head()
    uv_coords, uv_faces = uv_layout(h)
    face_eye, face_only = uv_masks()
    mean, basis = albedo_model(rng, h)
    arrays = dict(
        v_template=h.v_template.astype(np.float32),
        shapedirs=identity_basis(h, rng).astype(np.float32),
        exprdirs=expression_basis(h, rng).astype(np.float32),
        posedirs=pose_correctives(h).astype(np.float32),
        J_regressor=joint_regressor(h).astype(np.float32),
        parents=np.array([-1, 0, 1, 1, 1], np.int32),
        lbs_weights=skinning(h).astype(np.float32),
        faces=h.faces.astype(np.int32),
        uv_coords=uv_coords, uv_faces=uv_faces,
        albedo_mean=mean, albedo_basis=basis,
        uv_face_eye_mask=face_eye, uv_face_mask=face_only,
        fixed_displacement=np.zeros((UV_SIZE, UV_SIZE), np.float32),
    )
    arrays.update(landmarks(h))
    io.validate(arrays, "demo head")
    return arrays


def storage_dtypes(arrays: dict) -> dict:
    """The shipped arrays: still float32, but the large bases rounded to float16 precision.

    Rounding (relative error < 5e-4, far below what the hand-made modes mean) leaves few
    distinct mantissas, so np.savez_compressed shrinks the file from ~8.5 MB to ~2 MB while
    every array a consumer reads with plain np.load is float32, as the schema says.
    """
    small = dict(arrays)
    for k in ("shapedirs", "exprdirs", "posedirs", "albedo_basis"):
        small[k] = arrays[k].astype(np.float16).astype(np.float32)
    return small


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m jaxdeca.assets.make_demo_head", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "demo_head.npz"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    arrays = generate(a.seed)
    io.save_npz(a.out, storage_dtypes(arrays))
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e6:.1f} MB): V={arrays['v_template'].shape[0]} "
          f"F={arrays['faces'].shape[0]} T={arrays['uv_coords'].shape[0]}")


if __name__ == "__main__":
    main()
