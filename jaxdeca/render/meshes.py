"""Simple procedural meshes with UVs for tests and benchmarks (not part of DECA)."""
import numpy as np


def uv_sphere(n_lat, n_lon, radius=1.0):
    """Latitude-longitude sphere with a seam and UVs (u = longitude, v = latitude, v up).

    Returns dict(verts [V, 3] f32, faces [F, 3] i32, uv_coords [V, 2] f32, uv_faces = faces),
    F = 2 * n_lat * n_lon (the pole triangles are degenerate slivers of zero area; they are
    kept so the count is exact). Faces wind counter-clockwise seen from outside.
    """
    lat = np.linspace(0.0, np.pi, n_lat + 1)  # 0 at the top (+y)
    lon = np.linspace(0.0, 2 * np.pi, n_lon + 1)
    t, p = np.meshgrid(lat, lon, indexing="ij")
    verts = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], -1).reshape(-1, 3) * radius
    uv = np.stack([p / (2 * np.pi), 1.0 - t / np.pi], -1).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    a = (i * (n_lon + 1) + j).reshape(-1)
    b, c, d = a + 1, a + n_lon + 1, a + n_lon + 2
    faces = np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, d], -1)])
    return dict(verts=verts.astype(np.float32), faces=faces.astype(np.int32),
                uv_coords=uv.astype(np.float32), uv_faces=faces.astype(np.int32))
