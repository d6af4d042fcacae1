"""SoftRas colour aggregation: per-vertex attributes blended over every face near a pixel.

`rasterize` gives the hard z-buffer's fragments (DECA's renderer: colours come from the
nearest face alone) and SoftRas's soft coverage alpha. `soft_blend` is SoftRas's other half
(Liu et al. 2019; its kernel's `aggr_func_rgb='softmax'`): the colour of pixel i is

    I_i = (e_b C_b + sum_j e_j C_j(i)) / (e_b + sum_j e_j),
    e_j = D_j(i) exp((n_j(i) - m_i) / gamma),   e_b = exp((eps - m_i) / gamma),

with D_j = sigmoid(delta_j d_j^2 / sigma) the soft coverage of face j (as in `rasterize`),
C_j(i) the face's attributes at its clipped barycentrics (clip to [0, 1], divide by their sum,
at least 1e-5), n_j = (z_far - z_j) / (z_far - z_near) the normalised nearness of its depth
there (1 nearest), m_i = max(eps, max_j n_j) (SoftRas's running maximum, which keeps the
exponentials finite; the result does not depend on it) and C_b the background. Faces whose
depth at the pixel lies outside [z_near, z_far] are left out, as in SoftRas. gamma -> 0 lets
the nearest face win; sigma -> 0 as well gives the hard z-buffer's interpolated attributes.
Gradients reach vertex positions through D_j, the barycentrics and the depths, and reach the
attributes and the background.

Differences from SoftRas's CUDA kernel, all deliberate:
  * depth is interpolated linearly in screen space, as `rasterize` does (DECA's image space
    is orthographic; SoftRas interpolates 1 / z for its perspective camera);
  * faces farther than sqrt(16 sigma) px are dropped, as in `rasterize`'s alpha (SoftRas:
    d^2 > 9.2 sigma), so both use one set of faces per pixel;
  * sigma is in pixel^2 (SoftRas: in [-1, 1] NDC units squared), z_near / z_far are in DECA
    image-space depth.

Scheme: `rasterize`'s windows (see its module docstring). A first pass takes the per-pixel
maximum nearness (scatter-max, no gradient), a second sums e_j C_j and e_j over the windows
(the terms computed once per round behind a conditional, then one scatter-add of [S, S] blocks
per channel); its custom VJP replays the rounds and
differentiates each window's terms by hand (`_window_terms_vjp`). Memory is
O(slots * soft_window^2 * (C + 1)) per group. On XLA:CPU (2 cores; `benchmarks/render.py --blend`,
224 x 224, 10k faces, 3 channels, sigma 1) one image took 16 ms forward and 67-68 ms forward +
backward (40 MiB), against 11-13 ms and 19-21 ms for `rasterize` + `interpolate` + shading; 8
images 112-113 ms and 468-474 ms.
"""
import functools

import jax
import jax.numpy as jnp

from jaxdeca.explicit_sharding import batch_sharding
from jaxdeca.render import checks
from jaxdeca.render.batching import batch_mesh_axes, map_groups, split_batch
from jaxdeca.render.camera import to_pixels
from jaxdeca.render.rasterize import (_block_gather, _block_scatter, _canvas_rows, _col,
                                      _default_slots, _default_soft_window, _default_window, _from_canvas,
                                      _n_rounds, _offsets, _round_windows, _soft_coefs, _soft_pixels,
                                      _soft_setup, _soft_term_vjp, _finite_faces,
                                      SMALLEST_SHARPNESS, sharpness_ok, static_number)


def _nearness(fv, ox, oy, ok, sigma, z_near, z_far, xs=None):
    """Per window pixel: soft-term pieces and the face's clipped barycentrics and nearness.

    fv: [M, 3, 3] pixels + depth; ox, oy: [M] window origins; ok: [M, S, S]; xs: optionally
    `_soft_x`'s result, which then is not computed again.
    Returns x = +-d^2 / sigma, valid (the face counts at the pixel), the clipped, normalised
    barycentrics w (3 x [M, S, S]), the nearness n ([M, S, S]) and, for the gradient, the
    unclipped barycentrics (3 x [M, S, S]), the reciprocals 1 / A ([M, 1, 1], A the doubled
    signed area) and 1 / max(sum of the clipped ones, 1e-5) ([M, S, S]).
    """
    co, sgn, nondeg = _soft_coefs(fv[..., :2], ox, oy)
    if xs is None:
        x, use = _soft_pixels(co, sgn, nondeg, ok, sigma)[:2]
    else:
        x, use = xs, xs > -jnp.inf
    a, b, c = co[:3]
    dx, dy = _offsets(ok.shape[-1], fv.dtype)
    area = c[:, 0] + c[:, 1] + c[:, 2]  # the doubled signed area: sum_k w_k at any pixel
    inv = (1.0 / jnp.where(nondeg, area, 1.0))[:, None, None]
    lam = [(_col(c, k) + _col(a, k) * dx + _col(b, k) * dy) * inv for k in range(3)]
    w = [jnp.clip(lk, 0.0, 1.0) for lk in lam]
    s = 1.0 / jnp.maximum(w[0] + w[1] + w[2], 1e-5)
    w = [wk * s for wk in w]
    z = w[0] * _col(fv[..., 2], 0) + w[1] * _col(fv[..., 2], 1) + w[2] * _col(fv[..., 2], 2)
    n = (z_far - z) * (1.0 / (z_far - z_near))
    valid = use & (n >= 0.0) & (n <= 1.0)
    return x, valid, w, n, (lam, inv, s)


def _soft_x(fv, ox, oy, ok, sigma):
    """x = +-d^2 / sigma at each window pixel, -inf where the face is not used: [M, S, S]."""
    x, use = _soft_pixels(*_soft_coefs(fv[..., :2], ox, oy), ok, sigma)[:2]
    return jnp.where(use, x, -jnp.inf)


def _window_max(fv, ox, oy, ok, sigma, z_near, z_far):
    """Nearness of each window pixel's face, -inf where it does not count: [M, S, S]."""
    _, valid, _, n, _ = _nearness(fv, ox, oy, ok, sigma, z_near, z_far)
    return jnp.where(valid, n, -jnp.inf)


def _weight(x, valid, n, m, gamma):
    """e = D E with D = sigmoid(x) and E = exp((n - m) / gamma); 0 where the face does not count."""
    E = jnp.exp(jnp.where(valid, n - m, 0.0) * (1.0 / gamma))
    return jnp.where(valid, jax.nn.sigmoid(x) * E, 0.0)


def _mix(w, fa, c):
    """Attribute c of the face at the window pixels: sum_k w_k fa[:, k, c] ([M, S, S])."""
    return w[0] * fa[:, 0, c, None, None] + w[1] * fa[:, 1, c, None, None] + w[2] * fa[:, 2, c, None, None]


def _window_terms(fv, fa, ox, oy, ok, m, sigma, gamma, z_near, z_far):
    """e_j C_j and e_j at each window pixel: C + 1 x [M, S, S] (0 where the face does not count).

    fv: [M, 3, 3]; fa: [M, 3, C] corner attributes; m: [M, S, S] the pixels' maximum nearness.
    """
    x, valid, w, n, _ = _nearness(fv, ox, oy, ok, sigma, z_near, z_far)
    e = _weight(x, valid, n, m, gamma)
    return tuple([e * _mix(w, fa, c) for c in range(fa.shape[-1])] + [e])


def _window_terms_vjp(fv, fa, ox, oy, ok, m, sigma, gamma, z_near, z_far, g, live):
    """Gradient of sum_c sum(g[c] * _window_terms(...)[c]) w.r.t. fv [M, 3, 3] and fa [M, 3, C].

    Written out by hand (autodiff of the per-pixel code took ~20x the forward pass on XLA:CPU,
    recomputing it for every coefficient). With ge = g_e + sum_c g_c C_c the gradient of e:
      * e = D E, and d e / d x = e (1 - D): the distance term is `rasterize`'s soft-term VJP
        with the gradient -ge E (1 - D) of log(1 - D) = -softplus(x);
      * n = (z_far - z) / (z_far - z_near), d e / d n = e / gamma, z = sum_k w_k z_k;
      * C_c = sum_k w_k fa_kc, so fa_kc gets sum e g_c w_k and w_k gets e sum_c g_c fa_kc + gz z_k;
      * w = clip(lam, 0, 1) / max(sum, 1e-5) and lam_k = L_k / A with L_k the edge function
        of vertex k (cross(P_k+1 - p, P_k+2 - p)): gL_k = (glam_k - sum_j glam_j lam_j) / A, and
        corner P_j gets gL_j-1 perp(P_j+1 - p) - gL_j+1 perp(P_j-1 - p), perp(x, y) = (y, -x).
    The per-pixel work runs in three stages, each behind a conditional on `live` (a runtime-true
    predicate; a fusion barrier on XLA:CPU) so that it is computed once and materialised, and the
    sums over each window's pixels are products with [P, K] matrices: on XLA:CPU (2 cores, CPU
    time, benchmarks/render.py's meshes, one image) forward + backward took 95-102 ms against
    124-135 ms with one conditional of nine outputs (each output recomputing their shared work)
    and a reduction per sum.
    """
    C = fa.shape[-1]
    dx, dy = _offsets(ok.shape[-1], fv.dtype)
    zk = [_col(fv[..., 2], k) for k in range(3)]
    # stages: the distance term; e and ge; the gradients of the edge functions and of log(1 - D)
    xs = jax.lax.cond(live, lambda fv: _soft_x(fv, ox, oy, ok, sigma), lambda fv: jnp.zeros(ok.shape, fv.dtype), fv)

    def weights(fv, fa, m, g, xs):
        x, valid, w, n, _ = _nearness(fv, ox, oy, ok, sigma, z_near, z_far, xs)
        e = _weight(x, valid, n, m, gamma)
        return e, jnp.where(valid, g[C] + sum(g[c] * _mix(w, fa, c) for c in range(C)), 0.0)

    e, ge = jax.lax.cond(live, weights, lambda fv, *_: (jnp.zeros(ok.shape, fv.dtype),) * 2, fv, fa, m, g, xs)

    def gradients(fv, fa, g, xs, e, ge):
        x, valid, w, n, (lam, inv, s) = _nearness(fv, ox, oy, ok, sigma, z_near, z_far, xs)
        gz = ge * e * (-1.0 / (gamma * (z_far - z_near)))
        gw = [sum(e * g[c] * fa[:, k, c, None, None] for c in range(C)) + gz * zk[k] for k in range(3)]
        # through the normalisation by max(sum, 1e-5) (a constant below it) and the clip
        raw = w[0] + w[1] + w[2]  # 1 where the sum was above 1e-5
        dot = jnp.where(raw > 0.5, gw[0] * w[0] + gw[1] * w[1] + gw[2] * w[2], 0.0)
        glam = [jnp.where((lam[k] > 0.0) & (lam[k] < 1.0), (gw[k] - dot) * s, 0.0) for k in range(3)]
        dlam = glam[0] * lam[0] + glam[1] * lam[1] + glam[2] * lam[2]
        gL = [(glam[k] - dlam) * inv for k in range(3)]
        # E (1 - D) = e (1 - D) / D = e exp(-x)
        glog = jnp.where(valid, -ge * e * jnp.exp(-jnp.where(valid, x, 0.0)), 0.0)
        return tuple(gL) + (glog,)

    gL0, gL1, gL2, glog = jax.lax.cond(
        live, gradients, lambda fv, *_: (jnp.zeros(ok.shape, fv.dtype),) * 4, fv, fa, g, xs, e, ge)
    gL = (gL0, gL1, gL2)
    w = _nearness(fv, ox, oy, ok, sigma, z_near, z_far, xs)[2]  # cheap with xs given
    gz = ge * e * (-1.0 / (gamma * (z_far - z_near)))
    # corner positions relative to the window's first pixel centre: P - p = rel - (dx, dy)
    o = jnp.stack([ox, oy], -1).astype(fv.dtype)[:, None, :] + 0.5
    rel = fv[..., :2] - o  # [M, 3, 2]

    # the sums over each window's P pixels as products with [P, K] matrices (XLA:CPU's reductions
    # over a window's two minor axes run one at a time)
    M, P = ok.shape[0], ok.shape[1] * ok.shape[2]
    phi = jnp.stack([jnp.ones(ok.shape[1:], fv.dtype), jnp.broadcast_to(dx[0], ok.shape[1:]),
                     jnp.broadcast_to(dy[0], ok.shape[1:])], -1).reshape(P, 3)
    mom = jnp.dot(jnp.stack(gL, 1).reshape(3 * M, P), phi, precision="highest").reshape(M, 3, 3)

    def weighted(k, q):  # sum_p gL_k (P_q - p): [M, 2]
        s0, sx, sy = mom[:, k, 0], mom[:, k, 1], mom[:, k, 2]
        return jnp.stack([rel[:, q, 0] * s0 - sx, rel[:, q, 1] * s0 - sy], -1)

    gxy = []
    for j in range(3):
        q = weighted((j + 2) % 3, (j + 1) % 3)  # gL_j-1 (P_j+1 - p)
        r = weighted((j + 1) % 3, (j + 2) % 3)  # gL_j+1 (P_j-1 - p)
        gxy.append(jnp.stack([q[:, 1] - r[:, 1], r[:, 0] - q[:, 0]], -1))
    gxy = jnp.stack(gxy, 1) + _soft_term_vjp(fv[..., :2], ox, oy, ok, sigma, glog, live=live)
    A = jnp.stack([e * g[c] for c in range(C)] + [gz], 1).reshape(M, C + 1, P)
    sums = jnp.einsum("mcp,mkp->mkc", A, jnp.stack(w, 1).reshape(M, 3, P), precision="highest")  # [M, 3, C + 1]
    gzv, gfa = sums[..., C], sums[..., :C]
    return jnp.concatenate([gxy, gzv[..., None]], -1), gfa


def _max_nearness(xyz, F, H, W, S, slots, sigma, z_near, z_far, eps, cull):
    """m = max(eps, max_j n_j) per pixel on the canvas [G (H + S), W + S] (no gradient).
    xyz: [G * F, 3, 3] pixels + depth, the faces of G images one after another."""
    G = xyz.shape[0] // F
    boxes, wx, cum, total = _soft_setup(xyz[..., :2], H, W, S, sigma, cull)
    xyz = _finite_faces(xyz)

    def body(carry):
        r, acc = carry
        face, ox, oy, ok = _round_windows(boxes, wx, cum, total, r, slots, S, H, W)
        t = _window_max(xyz[face], ox, oy, ok, sigma, z_near, z_far)
        return r + 1, _block_scatter("max", acc, t, ox, _canvas_rows(oy, face, F, H, S))

    n = _n_rounds(total, slots)
    init = (jnp.int32(0), jnp.full((G * (H + S), W + S), eps, xyz.dtype))
    return jax.lax.while_loop(lambda c: c[0] < n, body, init)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9, 10, 11, 12))
def _accumulate(xyz, fa, m, F, H, W, S, slots, sigma, gamma, z_near, z_far, cull):
    """sum_j e_j C_j and sum_j e_j per pixel: canvas [G (H + S), W + S, C + 1].
    xyz: [G * F, 3, 3]; fa: [G * F, 3, C]; m: canvas [G (H + S), W + S] (no gradient)."""
    return _accumulate_fwd(xyz, fa, m, F, H, W, S, slots, sigma, gamma, z_near, z_far, cull)[0]


def _rounds(xyz, F, H, W, S, slots, sigma, cull):
    boxes, wx, cum, total = _soft_setup(xyz[..., :2], H, W, S, sigma, cull)
    return _n_rounds(total, slots), functools.partial(_round_windows, boxes, wx, cum, total)


def _accumulate_fwd(xyz, fa, m, F, H, W, S, slots, sigma, gamma, z_near, z_far, cull):
    res = (xyz, fa, m)  # the vertices as given: the backward pass finds the same windows
    n, windows = _rounds(xyz, F, H, W, S, slots, sigma, cull)
    xyz = _finite_faces(xyz)

    def body(carry):
        r, acc = carry
        face, ox, oy, ok = windows(r, slots, S, H, W)
        cy = _canvas_rows(oy, face, F, H, S)
        terms = functools.partial(_window_terms, ox=ox, oy=oy, ok=ok, m=_block_gather(m, ox, cy, S), sigma=sigma,
                                  gamma=gamma, z_near=z_near, z_far=z_far)
        # a conditional on a runtime-true predicate is a fusion barrier on XLA:CPU: the terms are
        # computed once, not again inside each channel's scatter
        t = jax.lax.cond(r < n, terms, lambda fv, fa: tuple(jnp.zeros(ok.shape, fv.dtype) for _ in acc),
                         xyz[face], fa[face])
        return r + 1, tuple(_block_scatter("add", a, tk, ox, cy) for a, tk in zip(acc, t))

    init = (jnp.int32(0), tuple(jnp.zeros(m.shape, xyz.dtype) for _ in range(fa.shape[-1] + 1)))
    acc = jnp.stack(jax.lax.while_loop(lambda c: c[0] < n, body, init)[1], -1)
    return acc, res


def _accumulate_bwd(F, H, W, S, slots, sigma, gamma, z_near, z_far, cull, res, g):
    """Replays the rounds: each window's terms are differentiated (`_window_terms_vjp`) against
    the incoming gradient gathered at its pixels, and added to its face's corners."""
    xyz, fa, m = res
    n, windows = _rounds(xyz, F, H, W, S, slots, sigma, cull)
    xyz = _finite_faces(xyz)
    g = tuple(g[..., k] for k in range(g.shape[-1]))

    def body(carry):
        r, gxyz, gfa = carry
        face, ox, oy, ok = windows(r, slots, S, H, W)
        cy = _canvas_rows(oy, face, F, H, S)
        gw = tuple(_block_gather(gk, ox, cy, S) for gk in g)
        mw = _block_gather(m, ox, cy, S)
        dv, da = _window_terms_vjp(xyz[face], fa[face], ox, oy, ok, mw, sigma, gamma, z_near, z_far, gw,
                                   live=r < n)
        return r + 1, gxyz.at[face].add(dv), gfa.at[face].add(da)

    init = (jnp.int32(0), jnp.zeros_like(xyz), jnp.zeros_like(fa))
    _, gxyz, gfa = jax.lax.while_loop(lambda c: c[0] < n, body, init)
    return gxyz, gfa, jnp.zeros_like(m)


_accumulate.defvjp(_accumulate_fwd, _accumulate_bwd)


def _blend_group(v_pix, attr, bg, faces, H, W, S, slots, sigma, gamma, z_near, z_far, eps, cull):
    """G images on one canvas. v_pix: [G, V, 3] pixels + depth; attr: [G, V, C];
    bg: [G, H, W, C] -> [G, H, W, C]."""
    G, F, C = v_pix.shape[0], faces.shape[0], attr.shape[-1]
    xyz = v_pix[:, faces].reshape(G * F, 3, 3)
    fa = attr[:, faces].reshape(G * F, 3, C)
    m = _max_nearness(jax.lax.stop_gradient(xyz), F, H, W, S, slots, sigma, z_near, z_far, eps, cull)
    acc = _accumulate(xyz, fa, m, F, H, W, S, slots, sigma, gamma, z_near, z_far, cull)
    acc = acc.reshape(G, H + S, W + S, C + 1)[:, :H, :W]
    eb = jnp.exp((eps - _from_canvas(m, G, H, W)) * (1.0 / gamma))[..., None]  # in (0, 1]: m >= eps
    return (eb * bg + acc[..., :C]) / (eb + acc[..., C:])


def soft_blend(verts_img, faces, attr, image_size, sigma=1.0, gamma=1e-4, z_range=(-10.0, 10.0), eps=1e-3,
               background=0.0, cull_backfaces=False, window=None, slots=None, batch_size=None):
    """SoftRas's soft colour aggregation of per-vertex attributes (module docstring).

    verts_img: [B, V, 3] DECA image space ([-1, 1], y down, z smaller = nearer), as for
      `rasterize`; faces: [F, 3] int; attr: [B, V, C] per-vertex attributes (e.g. colours);
      image_size: (H, W) static.
    sigma: soft-coverage sharpness in pixel^2, as `rasterize`'s. gamma: depth sharpness of the
      blend in units of normalised nearness (SoftRas's default 1e-4). Both finite and at least
      SMALLEST_SHARPNESS (float32's smallest normal number, 1.18e-38). sigma,
      gamma, z_range and eps are Python numbers (static under jit), as `rasterize`'s sigma.
    z_range: (z_near, z_far), the image-space depths mapped to nearness 1 and 0; faces whose
      depth at a pixel lies outside are left out there. The default holds any DECA decode.
    eps: the background's nearness (SoftRas's 1e-3). background: the colour C_b, broadcastable
      to [B, H, W, C] (differentiable).
    cull_backfaces, window, slots, batch_size: as `rasterize` (window sets the soft window's
      base; results do not depend on window, slots or batch_size).
    Returns [B, H, W, C] in the dtype verts_img's and attr's promote to, float32 at least (the
    background alone for a mesh with no faces; empty for an empty batch).
    """
    sigma, gamma, eps = (static_number(k, x) for k, x in (("sigma", sigma), ("gamma", gamma), ("eps", eps)))
    if not (sharpness_ok(sigma) and sharpness_ok(gamma)):
        raise ValueError(f"soft_blend needs finite sigma and gamma >= {SMALLEST_SHARPNESS:.3g} (float32's "
                         f"smallest normal number: below it 1 / sigma or 1 / gamma overflows), "
                         f"got sigma={sigma}, gamma={gamma}")
    z_near, z_far = (static_number("z_range", z) for z in z_range)
    if not z_far > z_near:
        raise ValueError(f"soft_blend needs z_range = (z_near, z_far) with z_far > z_near, got {z_range}")
    H, W = image_size
    verts_img = checks.per_vertex(verts_img, "soft_blend", "verts_img", 3)
    attr = checks.per_vertex(attr, "soft_blend", "attr")
    if attr.shape[:2] != verts_img.shape[:2]:
        raise ValueError(f"soft_blend: attr must be [B, V, C] for verts_img's B and V {verts_img.shape[:2]}, "
                         f"got shape {attr.shape}")
    faces = checks.mesh_faces(faces, verts_img.shape[1], "soft_blend")
    dtype = jnp.promote_types(jnp.promote_types(verts_img.dtype, attr.dtype), jnp.float32)
    v_pix = to_pixels(verts_img.astype(dtype), (H, W))
    attr = jnp.asarray(attr, dtype)
    B, C = v_pix.shape[0], attr.shape[-1]
    bg = jnp.broadcast_to(jnp.asarray(background, dtype), (B, H, W, C), out_sharding=batch_sharding(v_pix))
    if faces.shape[0] == 0:  # no face to blend: C_b at every pixel
        return bg
    S = _default_soft_window(float(sigma), int(window) if window else _default_window())
    if batch_size is None:
        batch_size = 1 if jax.default_backend() == "cpu" else B

    def run(v_pix, attr, bg, faces):
        G = max(1, min(int(batch_size), v_pix.shape[0]))
        fn = functools.partial(_blend_group, faces=faces, H=H, W=W, S=S,
                               slots=int(slots) if slots else _default_slots(G * faces.shape[0], S),
                               sigma=sigma, gamma=gamma, z_near=z_near, z_far=z_far,
                               eps=eps, cull=bool(cull_backfaces))
        return map_groups(fn, G, v_pix, attr, bg)

    mesh, axes = batch_mesh_axes(B)
    if axes:
        P = jax.sharding.PartitionSpec
        v_pix, attr, bg = split_batch((v_pix, attr, bg), mesh, axes)
        return jax.shard_map(run, mesh=mesh, in_specs=(P(axes), P(axes), P(axes), P()), out_specs=P(axes),
                             check_vma=False)(v_pix, attr, bg, faces)
    return run(v_pix, attr, bg, faces)
