"""Attribute interpolation by barycentrics, and mesh normals (DECA's vertex_normals)."""
import jax
import jax.numpy as jnp

from jaxdeca.explicit_sharding import batch_sharding
from jaxdeca.render import checks
from jaxdeca.render.batching import images_custom_vjp


def face_vertices(attr, faces):
    """Per-face corner attributes. attr: [B, V, C]; faces: [F, 3] -> [B, F, 3, C]."""
    attr = checks.per_vertex(attr, "face_vertices", "attr")
    return attr[:, checks.mesh_faces(faces, attr.shape[1], "face_vertices")]


def _take_rows_fwd(table, idx):
    return table[idx], (idx, table)  # table: for its shape and dtype


def _take_rows_bwd(res, g):
    idx, table = res
    rows = jnp.zeros(table.shape, g.dtype).at[idx.reshape(-1)].add(g.reshape(-1, table.shape[1]))
    return rows.astype(table.dtype), None


_take_rows = images_custom_vjp(_take_rows_fwd, _take_rows_bwd)


def take_rows(table, idx):
    """table[idx] with a scatter-friendly gradient. table: [B, N, C]; idx: [B, ...] int in
    [0, N) -> [B, ..., C].

    The gradient is one row scatter-add of the incoming gradient, per image: a batch's
    backward pass runs one image after another on CPU (`batching.images_custom_vjp`). On
    XLA:CPU (2 cores, CPU time, benchmarks/render.py's sphere, 224 x 224, one image, sigma 0),
    the forward+backward of its shaded image took 11.2-11.3 ms with it against 12.1-12.4 ms
    with one 1-D scatter-add per channel. (Autodiff's own transpose of the gather, measured when
    the rasterizer's barycentrics still went through take_rows, took 3.5 ms against 2.4 for the
    per-channel scatters.) Rows of zero gradient (the background's, all at face 0) are added,
    not dropped as grid_sample's are: dropped, the sphere's forward+backward took 5-8% longer.
    """
    return _take_rows(table, idx)


def interpolate(attr, faces, frags):
    """Interpolate per-vertex attributes. attr: [B, V, C] -> [B, H, W, C] (0 on background).

    Gathers each corner's vertex row directly (three [B, H, W, C] gathers of attr); a single
    gather of [3, C] blocks from [B, F, 3, C] face attributes is ~10x slower on XLA's CPU.
    """
    attr = checks.per_vertex(attr, "interpolate", "attr")
    faces = checks.mesh_faces(faces, attr.shape[1], "interpolate")
    if faces.shape[0] == 0:  # no face: every pixel is background
        return _background(attr, frags)
    vid = hit_vertex_ids(faces, frags.face_index)
    corners = [take_rows(attr, vid[..., k]) for k in range(3)]
    return _blend(corners, frags)


def hit_vertex_ids(faces, face_index):
    """Vertex ids of each pixel's face: faces [F, 3] (F > 0), face_index [B, H, W] (-1 on
    background, which reads face 0) -> [B, H, W, 3], split as face_index under an Explicit mesh."""
    idx = jnp.maximum(face_index, 0)
    return faces.at[idx].get(out_sharding=batch_sharding(idx))


def interpolate_face_attr(face_attr, frags):
    """Interpolate per-face corner attributes. face_attr: [B, F, 3, C] -> [B, H, W, C]."""
    if face_attr.shape[1] == 0:  # no face: every pixel is background
        return _background(face_attr, frags)
    idx = jnp.maximum(frags.face_index, 0)
    corners = [take_rows(face_attr[:, :, k], idx) for k in range(3)]  # [B, H, W, C]
    return _blend(corners, frags)


def _background(attr, frags):
    """The interpolation of a mesh with no faces: zeros [B, H, W, C], in the dtype `_blend` gives."""
    return jnp.zeros(frags.face_index.shape + attr.shape[-1:], jnp.result_type(attr.dtype, frags.bary.dtype),
                     out_sharding=batch_sharding(frags.face_index))


def _blend(corners, frags):
    """sum_k bary_k * corner_k. corners: 3 x [B, H, W, C] -> [B, H, W, C].

    Up to 8 channels it is written per channel (C = 3: 0.1 ms instead of 6 ms for the gradient
    of a 224 x 224 blend on XLA:CPU), so that the bary gradient is a sum of products rather than
    a reduction over the short channel axis, which XLA:CPU's default YNNPACK path runs slowly
    (see jaxdeca.xla_options). Wider attributes broadcast the barycentrics (not a contraction,
    which GPUs and TPUs would run at reduced matmul precision by default).
    """
    b = frags.bary
    C = corners[0].shape[-1]
    if C <= 8:
        out = jnp.stack([sum(b[..., k] * corners[k][..., c] for k in range(3)) for c in range(C)], -1)
    else:
        out = sum(b[..., k, None] * corners[k] for k in range(3))
    return jnp.where((frags.face_index >= 0)[..., None], out, 0.0)


def _normalize(x, eps=1e-6):
    """torch.nn.functional.normalize: x / max(||x||, eps), written as sqrt(max(||x||^2, eps^2))
    so that a zero vector (a vertex whose faces all collapsed) gets a finite gradient as in torch
    (the gradient of jnp.linalg.norm at 0 is NaN, even when nothing depends on it)."""
    return x / jnp.sqrt(jnp.maximum(fold_last(jnp.add, x * x), eps * eps))


def at_least_float32(verts):
    """verts at float32 at least: a FLAME face's cross product (~3e-10 m^2 squared) and the eps^2
    of _normalize are 0 in float16, whose normals were then all NaN. Results keep verts' dtype."""
    return verts.astype(jnp.promote_types(verts.dtype, jnp.float32))


def face_normals(verts, faces):
    """Unit face normals cross(v1 - v0, v2 - v0). verts: [B, V, 3] -> [B, F, 3], computed in
    float32 at least (`at_least_float32`)."""
    fv = face_vertices(at_least_float32(verts), faces)
    n = _normalize(jnp.cross(fv[..., 1, :] - fv[..., 0, :], fv[..., 2, :] - fv[..., 0, :]))
    return n.astype(verts.dtype)


def unit_vectors(x):
    """x / |x| over the last axis whatever its scale; 0, with a zero gradient, where x = 0.
    x: [..., D] -> [..., D]."""
    # divided by its largest component first (x / c has x's direction for any c > 0, so c is a
    # constant to the gradient): the squared sum is then in [1, 3] whatever x's scale, where
    # sum(x * x) of a float32 x under ~1e-19 underflows (the direction lost) and its rsqrt's
    # derivative overflows from ~1e-15 (an infinite gradient, NaN times a zero cotangent)
    c = jax.lax.stop_gradient(fold_last(jnp.maximum, jnp.abs(x)))
    ok = c > 0
    y = x / jnp.where(ok, c, 1.0)
    return jnp.where(ok, y * jax.lax.rsqrt(jnp.where(ok, fold_last(jnp.add, y * y), 1.0)), 0.0)


def fold_last(op, x):
    """`op` (jnp.add, jnp.maximum, ...) folded over x's last axis, left to right. x: [..., n] ->
    [..., 1].

    The values of the matching jnp reduction with keepdims (a sum is ((x0 + x1) + x2) as XLA's
    loop adds it), written as elementwise operations for the short axes of xyz or a triangle's
    corners: the training steps hand XLA:CPU's reductions to YNNPACK (jaxdeca.xla_options), whose
    kernels for a short minor axis run far slower than XLA's own loop; elementwise operations
    stay in XLA's fusions under every option.
    """
    out = x[..., :1]
    for i in range(1, x.shape[-1]):
        out = op(out, x[..., i:i + 1])
    return out


def corner_cross(p, q, r):
    """cross(q - p, r - p), the unnormalised normal a triangle (p, q, r) gives its corner p (twice
    its area times its unit normal), by jnp.cross's formula component by component.
    p, q, r: (x, y, z) tuples of equally shaped arrays."""
    a = [x - y for x, y in zip(q, p)]
    b = [x - y for x, y in zip(r, p)]
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def vertex_normals(verts, faces, scale_free=False):
    """Area-weighted vertex normals exactly as DECA's util.vertex_normals.

    Each corner receives the (unnormalised) cross product of its two incident edges, i.e.
    twice the face area times the face normal; sums are normalised with eps 1e-6 (in the
    vertices' unit squared: m^2 for FLAME), as DECA's F.normalize(eps=1e-6).
    scale_free=True: normalised whatever their length (0 only for an exact zero sum), for
    meshes whose faces are small enough that sums fall under 1e-6: the dense UV grid of
    `displacement_to_normals` (its `uv.grid_normals` normalises so), whose texels at 1024 px
    are ~0.3 mm apart on a FLAME head (sums ~5e-7 m^2), so eps 1e-6 left its detail normals
    0.03-1 long, not unit.
    verts: [B, V, 3]; faces: [F, 3] -> [B, V, 3], computed in float32 at least (`at_least_float32`).

    Written per coordinate and vertex-major ([V, B] row gathers and scatter-adds, the cross
    products component by component): gathered as [B, F, 3, 3] corner blocks of [B, V, 3], XLA:CPU
    laid the batch out between faces and coordinates, and forward+backward of 32 demo heads took
    70-94 ms against 25-33 ms so (8 heads: 8-12 ms against 3; one head ~0.7 ms either way).
    """
    wide = at_least_float32(checks.per_vertex(verts, "vertex_normals", "verts", 3))
    faces = checks.mesh_faces(faces, wide.shape[1], "vertex_normals")
    xyz = tuple(wide[..., k].T for k in range(3))  # 3 x [V, B]
    corner = [tuple(c[faces[:, j]] for c in xyz) for j in range(3)]  # corner j of every face: 3 x [F, B]
    n = [jnp.zeros_like(c) for c in xyz]
    for j in (1, 2, 0):  # DECA's order: cross(v2 - v1, v0 - v1) to corner 1, then corners 2 and 0
        contrib = corner_cross(corner[j], corner[(j + 1) % 3], corner[(j + 2) % 3])
        n = [nk.at[faces[:, j]].add(ck) for nk, ck in zip(n, contrib)]
    n = jnp.stack([nk.T for nk in n], -1)  # [B, V, 3]
    return (unit_vectors(n) if scale_free else _normalize(n)).astype(verts.dtype)
