"""The shared OBJ reader/writer: hand-written files in, exact text out, bad files named."""
import numpy as np
import pytest

from jaxdeca import wavefront


def test_read_triangulates_polygons_resolves_relative_indices_and_keeps_uvs(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text("# comment\nmtllib m.mtl\nv 0 0 0\nv 1 0 0 0.5 0.5 0.5\nv 1 1 0\nv 0 1 0\n"
                 "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\ng head\nusemtl FaceTexture\ns off\n"
                 "f 1/1/1 2/2/1 3/3/1 4/4/1\nf -4/-4 -3/-3 -1/-1\n")
    m = wavefront.read(str(p))
    np.testing.assert_array_equal(m["vertices"], [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(m["faces"], [[0, 1, 2], [0, 2, 3], [0, 1, 3]])
    np.testing.assert_array_equal(m["uv_coords"], [[0, 0], [1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(m["uv_faces"], [[0, 1, 2], [0, 2, 3], [0, 1, 3]])


def test_read_without_texture_indices_gives_no_uv_faces(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1\nf 1//1 2//1 3//1\n")
    m = wavefront.read(str(p))
    assert m["uv_faces"] is None
    np.testing.assert_array_equal(m["faces"], [[0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("text, message", [
    ("v 0 0 0\nf 1 2 x\n", r"bad.obj: line 2 is not a valid OBJ record: f 1 2 x"),
    ("v 0 0\n", r"bad.obj: line 1 is not a valid OBJ record"),
    ("v 0 0 0\nv 1 0 0\nf 1 2\n", r"bad.obj: line 3 is not a valid OBJ record"),
    ("v 0 0 0\nf 0 1 1\n", r"bad.obj: line 2 is not a valid OBJ record"),
    ("vt 0 0\n", r"bad.obj: no vertices found"),
    ("v 0 0 0\nv 1 0 0\nf 1 2 4\n", r"bad.obj: face index out of range for 2 vertices"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/2\n",
     r"bad.obj: texture index out of range for 1 texture coordinates"),
])
def test_read_refuses_bad_files_naming_file_and_line(tmp_path, text, message):
    class MyError(ValueError):
        pass

    bad = tmp_path / "bad.obj"
    bad.write_text(text)
    with pytest.raises(MyError, match=message):
        wavefront.read(str(bad), MyError)


def test_read_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope.obj: OBJ file not found"):
        wavefront.read(str(tmp_path / "nope.obj"))


def test_write_exact_text(tmp_path):
    v = np.array([[0.0, 1.5, -2.0], [1e-3, 0.25, 3.0], [0.1, 0.2, 0.3]], np.float32)
    f = np.array([[0, 1, 2]])
    path = wavefront.write(str(tmp_path / "sub" / "a.obj"), v, f, uv_coords=[[0.0, 1.0], [0.5, 0.25], [1.0, 0.0]],
                           uv_faces=[[2, 1, 0]], mtllib="a.mtl", usemtl="FaceTexture")
    assert open(path).read() == (
        "mtllib a.mtl\nv 0 1.5 -2\nv 0.00100000005 0.25 3\nv 0.100000001 0.200000003 0.300000012\n"
        "vt 0 1\nvt 0.5 0.25\nvt 1 0\nusemtl FaceTexture\nf 1/3 2/2 3/1\n")
    path = wavefront.write(str(tmp_path / "b.obj"), v[:, :3], f, colors=[[1, 0, 0], [0, 1, 0], [0, 0, 0.5]])
    assert open(path).read().splitlines()[0] == "v 0 1.5 -2 1 0 0"
    assert open(path).read().splitlines()[-1] == "f 1 2 3"


def test_write_rows_of_every_section_and_a_point_cloud_exact_text(tmp_path):
    """write formats each section in one go (wavefront._rows): every row of every section is
    there, in order, and a section without rows leaves no blank line (a point cloud has no 'f')."""
    v = np.array([[0.0, 1.5, -2.0], [1e-3, 0.25, 3.0], [0.1, 0.2, 0.3], [4, 5, 6]], np.float32)
    f = np.array([[0, 1, 2], [3, 2, 1]])
    path = wavefront.write(str(tmp_path / "a.obj"), v, f, colors=np.eye(4, 3), uv_coords=[[0.0, 1.0], [0.5, 0.25]],
                           uv_faces=[[0, 1, 0], [1, 1, 0]])
    assert open(path).read() == (
        "v 0 1.5 -2 1 0 0\nv 0.00100000005 0.25 3 0 1 0\nv 0.100000001 0.200000003 0.300000012 0 0 1\n"
        "v 4 5 6 0 0 0\nvt 0 1\nvt 0.5 0.25\nf 1/1 2/2 3/1\nf 4/2 3/2 2/1\n")
    path = wavefront.write(str(tmp_path / "p.obj"), v[:2], np.zeros((0, 3), int))
    assert open(path).read() == "v 0 1.5 -2\nv 0.00100000005 0.25 3\n"


def test_write_read_roundtrip_is_exact_for_float32(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3)).astype(np.float32) * 100
    vt = rng.random((60, 2)).astype(np.float32)
    f = rng.integers(0, 50, (40, 3))
    ft = rng.integers(0, 60, (40, 3))
    m = wavefront.read(wavefront.write(str(tmp_path / "r.obj"), v, f, uv_coords=vt, uv_faces=ft))
    np.testing.assert_array_equal(m["vertices"].astype(np.float32), v)
    np.testing.assert_array_equal(m["uv_coords"].astype(np.float32), vt)
    np.testing.assert_array_equal(m["faces"], f)
    np.testing.assert_array_equal(m["uv_faces"], ft)


@pytest.mark.parametrize("kwargs, message", [
    (dict(vertices=np.zeros((3, 2)), faces=np.zeros((1, 3), int)), r"vertices must be \[N, 3\], found \(3, 2\)"),
    (dict(vertices=np.zeros((3, 3)), faces=np.zeros((4,), int)), r"faces must be \[N, 3\], found \(4,\)"),
    (dict(vertices=np.zeros((3, 3)), faces=np.zeros((1, 3), int), uv_coords=np.zeros((3, 2))),
     r"uv_coords and uv_faces go together"),
    (dict(vertices=np.zeros((3, 3)), faces=np.zeros((1, 3), int), colors=np.zeros((2, 3))),
     r"2 colours for 3 vertices"),
    # Indices the reader (and any OBJ reader) refuses: 1-based faces passed in, -1 padding.
    (dict(vertices=np.zeros((3, 3)), faces=np.array([[1, 2, 3]])), r"faces index 3 out of range for 3 vertices"),
    (dict(vertices=np.zeros((3, 3)), faces=np.array([[0, 1, -1]])), r"faces index -1 out of range for 3 vertices"),
    (dict(vertices=np.zeros((3, 3)), faces=np.array([[0, 1, 2]]), uv_coords=np.zeros((2, 2)),
          uv_faces=np.array([[0, 1, 2]])), r"uv_faces index 2 out of range for 2 texture coordinates"),
    # An OBJ without vertices: the reader refuses it ('no vertices found'), so it is never written.
    (dict(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), int)), r"w.obj: no vertices to write"),
])
def test_write_refuses_wrong_shapes(tmp_path, kwargs, message):
    path = tmp_path / "w.obj"
    with pytest.raises(ValueError, match=message):
        wavefront.write(str(path), **kwargs)
    assert not path.exists()


def test_read_utf8_bom_keeps_the_first_vertex(tmp_path):
    """An OBJ saved with a UTF-8 byte-order mark (Windows editors, .NET writers) starts with
    '\\ufeffv': the first vertex must not be dropped (that shifts every face silently)."""
    p = tmp_path / "bom.obj"
    p.write_bytes("\ufeffv 0 0 0\r\nv 1 0 0\r\nv 0 1 0\r\nv 1 1 0\r\nf 1 2 3\r\nf 2 4 3\r\n".encode("utf-8"))
    m = wavefront.read(str(p))
    np.testing.assert_array_equal(m["vertices"], [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(m["faces"], [[0, 1, 2], [1, 3, 2]])
