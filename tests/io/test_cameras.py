"""Camera models, cameras files, the EXIF focal guess, and delfi's principal-point convention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from delfi.io.cameras import Camera, camera_from_exif, cameras_for, default_camera, parse_intrinsics, read_cameras


def test_K_is_in_delfi_convention_and_from_K_inverts_it():
    cam = Camera("PINHOLE", 640, 480, (500.0, 510.0, 320.0, 240.0))  # COLMAP: centred = (w/2, h/2)
    assert np.allclose(cam.K(), [[500, 0, 319.5], [0, 510, 239.5], [0, 0, 1]])  # delfi: pixel centres
    assert Camera.from_K(cam.K(), 640, 480) == cam
    with pytest.raises(ValueError, match="fx, 0, cx"):
        Camera.from_K(np.array([[500, 1.0, 3], [0, 500, 2], [0, 0, 1]]), 640, 480)


def test_normalise_projects_back_and_removes_distortion():
    cam = Camera("OPENCV", 800, 600, (700.0, 690.0, 400.0, 300.0, 0.1, -0.05, 0.001, -0.002))
    rng = np.random.default_rng(0)
    y = rng.uniform(-0.5, 0.5, (50, 2))  # undistorted normalised points
    k1, k2, p1, p2 = cam.distortion
    x, v = y[:, 0], y[:, 1]
    r2 = x * x + v * v
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * v + p2 * (r2 + 2 * x * x)
    yd = v * radial + 2 * p2 * x * v + p1 * (r2 + 2 * v * v)
    pixels = np.c_[700 * xd + 400 - 0.5, 690 * yd + 300 - 0.5]  # COLMAP's centre, delfi's pixel origin
    assert np.abs(cam.normalise(pixels) - y).max() < 1e-9
    pinhole = Camera("SIMPLE_PINHOLE", 800, 600, (700.0, 400.0, 300.0))
    assert np.allclose(pinhole.normalise([[399.5, 299.5]]), [[0, 0]])


def test_bad_cameras_are_refused():
    with pytest.raises(ValueError, match="takes 4 parameters"):
        Camera("SIMPLE_RADIAL", 10, 10, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="camera model"):
        Camera("FISHEYE_X", 10, 10, (1.0,))
    with pytest.raises(ValueError, match="focal"):
        Camera("SIMPLE_PINHOLE", 10, 10, (0.0, 5.0, 5.0))


def test_scaled_camera_follows_a_resize():
    cam = Camera("SIMPLE_RADIAL", 1000, 800, (1200.0, 500.0, 400.0, 0.01))
    half = cam.scaled(500, 400)
    assert half.params == (600.0, 250.0, 200.0, 0.01)
    # a pixel centre x maps to (x + 0.5) * s - 0.5 under delfi's resize rule: the normalised point is kept
    x = np.array([[123.0, 456.0]])
    assert np.allclose(cam.normalise(x), half.normalise((x + 0.5) * 0.5 - 0.5))


def test_read_cameras_formats(tmp_path):
    hloc = tmp_path / "queries.txt"
    hloc.write_text("# hloc's queries_with_intrinsics\nq/a.jpg SIMPLE_RADIAL 640 480 500 320 240 0.01\n"
                    "b.jpg PINHOLE 800 600 700 705 400 300\n* SIMPLE_PINHOLE 100 100 90 50 50\n")
    cams = read_cameras(hloc)
    assert set(cams) == {"q/a.jpg", "b.jpg", "*"} and cams["b.jpg"].focal == (700.0, 705.0)
    colmap = tmp_path / "cameras.txt"
    colmap.write_text("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                      "# Number of cameras: 1\n1 PINHOLE 640 480 500 500 320 240\n")
    assert read_cameras(colmap) == {"*": Camera("PINHOLE", 640, 480, (500.0, 500.0, 320.0, 240.0))}
    colmap.write_text("# Camera list\n1 PINHOLE 640 480 500 500 320 240\n2 PINHOLE 640 480 400 400 320 240\n")
    with pytest.raises(ValueError, match="2 cameras"):
        read_cameras(colmap)


@pytest.mark.parametrize("text,message", [
    ("a.jpg PINHOLE 640 480 500 500 320\n", "line 1: camera model PINHOLE takes 4"),
    ("a.jpg PINHOLE 640 x 500 500 320 240\n", "line 1: width, height"),
    ("# c\na.jpg SIMPLE_PINHOLE 6 4 5 3 2\na.jpg SIMPLE_PINHOLE 6 4 5 3 2\n", "line 3: camera 'a.jpg' given twice"),
    ("a.jpg SIMPLE_PINHOLE 6 4 nan 3 2\n", "line 1: camera parameters must be finite"),
    ("a.jpg\n", "line 1: expected 'name MODEL"),
    ("# nothing\n", "no camera"),
])
def test_read_cameras_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "cams.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_cameras(path)
    assert str(path) in str(info.value)


def test_read_cameras_refuses_binary(tmp_path):
    path = tmp_path / "cameras.bin"
    path.write_bytes(b"\x01\x00\xff\xfe\x00")
    with pytest.raises(ValueError, match="UTF-8"):
        read_cameras(path)


def _jpeg(path, size, tags=None):
    img = Image.new("RGB", size, (120, 80, 40))
    exif = Image.Exif()
    for tag, value in (tags or {}).items():
        exif.get_ifd(0x8769)[tag] = value
    img.save(path, exif=exif.tobytes())
    return path


def test_exif_focal_as_colmap_guesses_it(tmp_path):
    f35 = camera_from_exif(_jpeg(tmp_path / "a.jpg", (600, 400), {0xA405: 28}))
    assert f35.from_exif and f35.params == pytest.approx((28 / 43.27 * 721.110, 300.0, 200.0, 0.0), rel=1e-4)
    plane = camera_from_exif(_jpeg(tmp_path / "b.jpg", (600, 400), {0x920A: 4.0, 0xA20E: 250.0, 0xA210: 4}))
    assert not plane.from_exif and plane.focal == (720.0, 720.0)  # COLMAP reads no focal-plane resolution
    none = camera_from_exif(_jpeg(tmp_path / "c.jpg", (600, 400)))
    assert not none.from_exif and none == default_camera(600, 400) and none.focal == (720.0, 720.0)


@pytest.mark.parametrize("size,tags", [((600, 400), {0xA405: 28}), ((400, 600), {0xA405: 50}), ((800, 600), {}),
                                       ((640, 480), {0x920A: 4.0, 0xA20E: 250.0, 0xA210: 4})])
def test_exif_camera_equals_pycolmaps(tmp_path, size, tags):
    pycolmap = pytest.importorskip("pycolmap")
    path = _jpeg(tmp_path / "x.jpg", size, tags)
    theirs = pycolmap.infer_camera_from_image(str(path))
    ours = camera_from_exif(path)
    assert ours.model == theirs.model_name and ours.params == pytest.approx(list(theirs.params), rel=1e-9)
    assert ours.from_exif == theirs.has_prior_focal_length


def test_parse_intrinsics_and_lookup(tmp_path):
    assert parse_intrinsics("exif") is None
    assert parse_intrinsics("500") == (500.0,)
    assert parse_intrinsics("500,510,319.5,239.5") == (500.0, 510.0, 319.5, 239.5)
    for bad in ("fast", "1,2", "-5", "500,510,nan,1"):
        with pytest.raises(ValueError, match="--intrinsics"):
            parse_intrinsics(bad)
    four = cameras_for((500.0, 510.0, 319.5, 239.5), "x.jpg", 640, 480)
    assert np.allclose(four.K(), [[500, 0, 319.5], [0, 510, 239.5], [0, 0, 1]])
    one = cameras_for((500.0,), "x.jpg", 640, 480)
    assert np.allclose(one.K(), [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
    path = tmp_path / "c.txt"
    path.write_text("sub/a.jpg PINHOLE 1280 960 1000 1000 640 480\nb.jpg SIMPLE_PINHOLE 640 480 500 320 240\n")
    spec = parse_intrinsics(str(path))
    assert cameras_for(spec, "sub/a.jpg", 640, 480).focal == (500.0, 500.0)  # given full size, image halved
    assert cameras_for(spec, "other/b.jpg", 640, 480).focal == (500.0, 500.0)  # by file name
    with pytest.raises(KeyError, match="no camera for image 'c.jpg'"):
        cameras_for(spec, "c.jpg", 640, 480)
    assert cameras_for(None, "c.jpg", 640, 480, _jpeg(tmp_path / "c.jpg", (640, 480), {0xA405: 36})).focal == pytest.approx((800 * 36 / 43.27,) * 2)
    assert cameras_for(None, "c.jpg", 640, 480, tmp_path / "missing.jpg") == default_camera(640, 480)
