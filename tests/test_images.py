"""Image loading, DeiT preprocessing, input collection and threaded batching.

Every test file is generated at test time in a tmp dir; nothing big is committed.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sacvit_deploy.core.errors import ConfigError, SacvitError
from sacvit_deploy.model.config import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from sacvit_deploy.runtime import images as images_mod
from sacvit_deploy.runtime.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    _resize_output_size,
    collect_images,
    iter_batches,
    load_image,
    preprocess,
    sample_images,
)

SMALL = PreprocessConfig(input_size=16, resize_size=18)


def noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, img: Image.Image, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


# ---- good files -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("suffix", "kw"),
    [(".png", {}), (".bmp", {}), (".tiff", {}), (".webp", {"lossless": True}), (".PNG", {})],
)
def test_lossless_formats_round_trip(tmp_path, suffix, kw):
    a = noise(23, 17)
    path = save(tmp_path / f"img{suffix}", Image.fromarray(a), **kw)
    assert np.array_equal(pixels(load_image(path)), a)
    assert np.array_equal(pixels(load_image(str(path))), a)


def test_jpeg_and_grayscale_jpeg(tmp_path):
    rgb = save(tmp_path / "a.jpg", Image.fromarray(noise(40, 30)), quality=95)
    assert load_image(rgb).size == (40, 30)
    gray = save(tmp_path / "g.jpeg", Image.fromarray(noise(40, 30)[..., 0]))
    a = pixels(load_image(gray))
    assert a.shape == (30, 40, 3) and (a == a[..., :1]).all()


def test_grayscale_and_bilevel_png_are_replicated(tmp_path):
    g = noise(9, 7)[..., 0]
    a = pixels(load_image(save(tmp_path / "g.png", Image.fromarray(g))))
    assert np.array_equal(a, np.repeat(g[..., None], 3, axis=2))
    bits = Image.fromarray(g > 127).convert("1")
    a = pixels(load_image(save(tmp_path / "b.png", bits)))
    assert set(np.unique(a)) <= {0, 255} and np.array_equal(a[..., 0] == 255, g > 127)


def _palette_image() -> Image.Image:
    p = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    return p


def test_palette_with_transparency_on_white(tmp_path):
    p = _palette_image()
    path = save(tmp_path / "p.png", p, transparency=0)
    assert Image.open(path).mode == "P"
    assert pixels(load_image(path)).tolist() == [[[255, 255, 255], [255, 0, 0]], [[0, 0, 255], [255, 0, 0]]]
    gif = save(tmp_path / "p.gif", p)  # no transparency: the palette colours
    assert pixels(load_image(gif)).tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [255, 0, 0]]]


def test_rgba_and_la_composite_on_white(tmp_path):
    rgba = np.array([[[0, 0, 0, 0], [200, 10, 10, 255], [0, 0, 0, 128]]], np.uint8)
    a = pixels(load_image(save(tmp_path / "a.png", Image.fromarray(rgba))))
    assert a[0, 0].tolist() == [255, 255, 255]  # fully transparent black -> white
    assert a[0, 1].tolist() == [200, 10, 10]
    assert all(abs(int(v) - 127) <= 1 for v in a[0, 2])  # half-transparent black -> mid gray
    la = Image.fromarray(rgba).convert("LA")
    b = pixels(load_image(save(tmp_path / "la.png", la)))
    assert b[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, suffix):
    a16 = np.array([[0, 1000, 32896, 65535]], np.uint16)
    path = save(tmp_path / f"g16{suffix}", Image.fromarray(a16))
    assert Image.open(path).mode.startswith("I;16")
    # round(v * 255 / 65535): 1000 -> 3.89 -> 4, 32896 = 128 * 257 -> 128
    assert pixels(load_image(path))[..., 0].tolist() == [[0, 4, 128, 255]]


def test_cmyk_jpeg(tmp_path):
    path = save(tmp_path / "c.jpg", Image.new("CMYK", (16, 16), (255, 0, 0, 0)), quality=95)
    assert Image.open(path).mode == "CMYK"
    a = pixels(load_image(path)).astype(int)
    assert np.abs(a - [0, 255, 255]).max() <= 8  # pure cyan


def test_exif_orientation_6_is_applied(tmp_path):
    # 40 wide, 20 tall; top-left quadrant red, the rest blue. Orientation 6 means "rotate 90
    # degrees clockwise to display": the result is 20 wide, 40 tall with red at the top right.
    a = np.zeros((20, 40, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[:10, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "rot.jpg", Image.fromarray(a), exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    out = pixels(img).astype(int)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    assert np.abs(out[2:8, 12:18] - red).max() < 40  # top right
    for corner in (out[2:8, 2:8], out[32:38, 2:8], out[32:38, 12:18]):
        assert np.abs(corner - blue).max() < 40


def test_multi_frame_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert pixels(load_image(path))[0, 0].tolist() == [255, 0, 0]


def test_pil_inputs_are_converted_not_mutated():
    for mode in ("L", "CMYK", "YCbCr", "LA", "RGBA", "P", "I", "F"):
        src = Image.new(mode, (5, 4))
        before = src.tobytes()
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (5, 4), mode
        assert src.mode == mode and src.tobytes() == before
    ycbcr = Image.new("RGB", (3, 3), (10, 200, 30)).convert("YCbCr")
    assert np.abs(pixels(load_image(ycbcr)).astype(int) - [10, 200, 30]).max() <= 2


def test_pil_float_image_outside_unit_range_is_refused():
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(Image.fromarray(np.full((2, 2), 255.0, np.float32)))


def test_numpy_inputs():
    g = noise(6, 5)
    assert np.array_equal(pixels(load_image(g)), g)
    assert np.array_equal(pixels(load_image(g[..., 0])), np.repeat(g[..., :1], 3, axis=2))
    rgba = np.concatenate([g, np.zeros((5, 6, 1), np.uint8)], axis=2)
    assert (pixels(load_image(rgba)) == 255).all()  # fully transparent -> white
    u16 = np.array([[0, 257, 65535]], np.uint16)
    assert pixels(load_image(u16))[0, :, 0].tolist() == [0, 1, 255]
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert pixels(load_image(f))[0, :, 0].tolist() == [0, 128, 255]  # rint(127.5) = 128
    assert np.array_equal(pixels(load_image(g[..., :1])), pixels(load_image(g[..., 0])))


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((3, 8, 8), np.uint8), "channels-last"),
        (np.zeros((4, 4, 2), np.uint8), "HxW, HxWx3 or HxWx4"),
        (np.zeros((0, 4), np.uint8), "empty array"),
        (np.zeros((4, 4), np.int64), "unsupported pixel type int64"),
        (np.full((4, 4), 255.0), r"found \[255, 255\]"),
        (np.full((4, 4), np.nan, np.float32), "must lie in"),
    ],
)
def test_bad_numpy_inputs(array, reason):
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(array)
    assert str(info.value).startswith("<array>: ")


def test_unsupported_source_type():
    with pytest.raises(TypeError, match="bytes"):
        load_image(b"\xff\xd8")


# ---- bad files ------------------------------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buf, fmt)
    return buf.getvalue()


BAD_FILES = {
    "zero_bytes.jpg": (b"", "empty file (0 bytes)"),
    "random.jpg": (np.random.default_rng(1).bytes(2000), "not an image"),
    "notes.png": (b"hello, I am a text file\n" * 10, "not an image"),
    "truncated.jpg": (_encoded("JPEG")[:1500], "truncated or corrupt image"),
    "truncated.png": (_encoded("PNG")[:6000], "truncated or corrupt image"),
    "bomb.png": (
        _png_header(20_000, 20_000),
        "decompression bomb: 400000000 pixels exceeds the limit of 178956970",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files(tmp_path, name):
    data, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert reason in err.reason
    assert err.path == path
    assert str(err) == f"{path}: {err.reason}" and "\n" not in str(err)
    assert isinstance(err, SacvitError)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageLoadError, match="is a folder, not an image file"):
        load_image(tmp_path / "x.jpg")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_permission_denied(tmp_path):
    path = save(tmp_path / "locked.png", Image.new("RGB", (4, 4)))
    path.chmod(0)
    try:
        with pytest.raises(ImageLoadError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_permission_denied_when_opening(tmp_path, monkeypatch):
    # Also runs as root: the error Pillow's open() would raise for an unreadable file.
    path = save(tmp_path / "a.png", Image.new("RGB", (4, 4)))

    def deny(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image(path)


def test_io_error_when_opening(tmp_path, monkeypatch):
    path = save(tmp_path / "a.png", Image.new("RGB", (4, 4)))

    def fail(fp, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Image, "open", fail)
    with pytest.raises(ImageLoadError, match="cannot read the file"):
        load_image(path)


def test_pixel_limit_is_read_at_each_load(tmp_path, monkeypatch):
    path = save(tmp_path / "a.png", Image.new("RGB", (20, 20)))
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 100)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == (
        "decompression bomb: 400 pixels exceeds the limit of 100; raise MAX_PIXELS if you trust the file"
    )


def test_pixel_limit_above_pillows_names_pillows_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(20_000, 20_000))
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 10**9)
    with pytest.raises(ImageLoadError, match="raise PIL.Image.MAX_IMAGE_PIXELS"):
        load_image(path)


# ---- preprocessing --------------------------------------------------------------------------------
def reference_transform(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """torchvision's Resize(int) -> CenterCrop -> ToTensor -> Normalize on a PIL image, written out
    from torchvision's source with PIL and torch (torchvision itself cannot be installed here)."""
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = cfg.resize_size, int(cfg.resize_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), resample[cfg.interpolation])
    c = cfg.input_size
    if c > new_w or c > new_h:
        ltrb = (
            (c - new_w) // 2 if c > new_w else 0,
            (c - new_h) // 2 if c > new_h else 0,
            (c - new_w + 1) // 2 if c > new_w else 0,
            (c - new_h + 1) // 2 if c > new_h else 0,
        )
        img = ImageOps.expand(img, border=ltrb, fill=0)
    top = int(round((img.height - c) / 2.0))  # noqa: RUF046 - as torchvision writes it
    left = int(round((img.width - c) / 2.0))  # noqa: RUF046
    img = img.crop((left, top, left + c, top + c))
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)
    mean = torch.as_tensor(cfg.mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(cfg.std, dtype=torch.float32)[:, None, None]
    return t.sub_(mean).div_(std).numpy()


@pytest.mark.parametrize(
    ("size", "cfg"),
    [
        ((500, 375), PreprocessConfig()),  # landscape
        ((375, 500), PreprocessConfig()),  # portrait
        ((640, 427), PreprocessConfig()),  # long side 383.7 -> 383 (truncated)
        ((256, 256), PreprocessConfig()),  # already the resize size
        ((256, 301), PreprocessConfig()),  # odd offsets
        ((224, 224), PreprocessConfig(resize_size=224)),  # exactly the crop
        ((300, 200), PreprocessConfig(resize_size=200)),  # smaller than the crop: padded
        ((301, 201), PreprocessConfig(resize_size=201)),  # odd padding
        ((3, 2), PreprocessConfig.for_resolution(288)),  # tiny, upsampled
        ((375, 500), PreprocessConfig(interpolation="bilinear")),
        ((500, 375), PreprocessConfig(interpolation="nearest")),
        ((300, 200), PreprocessConfig(resize_size=201, interpolation="nearest")),
    ],
)
def test_preprocess_matches_torchvision_reference(size, cfg):
    img = Image.fromarray(noise(*size, seed=size[0]))
    out = preprocess(img, cfg)
    assert out.dtype == np.float32 and out.shape == (3, cfg.input_size, cfg.input_size)
    assert out.flags.c_contiguous
    assert np.array_equal(out, reference_transform(img, cfg))


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (640, 427, (383, 256)),
        (427, 640, (256, 383)),
        (500, 375, (341, 256)),
        (256, 256, (256, 256)),
        (1, 3, (256, 768)),
    ],
)
def test_resize_rule(w, h, expected):
    assert _resize_output_size(w, h, 256) == expected


def denormalise(out: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    x = out * np.asarray(cfg.std, np.float32)[:, None, None] + np.asarray(cfg.mean, np.float32)[:, None, None]
    return np.rint(x * 255).astype(int)


def test_constant_image_gives_known_numbers():
    img = Image.new("RGB", (300, 200), (10, 128, 250))
    out = preprocess(img, PreprocessConfig())
    for c, v in enumerate((10, 128, 250)):
        want = (np.float32(v) / np.float32(255) - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
        assert (out[c] == want).all()


@pytest.mark.parametrize(("h", "top"), [(13, 2), (15, 4)])
def test_center_crop_offsets_round_half_to_even(h, top):
    # No resize (the shorter side is already 10), nearest: pixel (x, y) holds (10x, 10y, 0).
    cfg = PreprocessConfig(input_size=8, resize_size=10, interpolation="nearest")
    ys, xs = np.mgrid[0:h, 0:10]
    img = Image.fromarray(np.stack([xs * 10, ys * 10, 0 * xs], axis=2).astype(np.uint8))
    px = denormalise(preprocess(img, cfg), cfg)
    # (13 - 8) / 2 = 2.5 -> 2 and (15 - 8) / 2 = 3.5 -> 4, like Python's round(); left is (10 - 8) / 2 = 1.
    assert px[0, 0, 0] == 10 * 1 and px[1, 0, 0] == 10 * top
    assert px[0, 0, 7] == 10 * 8 and px[1, 7, 0] == 10 * (top + 7)


def test_smaller_than_crop_is_zero_padded():
    cfg = PreprocessConfig(input_size=8, resize_size=5, interpolation="nearest")
    img = Image.new("RGB", (5, 5), (255, 255, 255))
    px = denormalise(preprocess(img, cfg), cfg)
    inside = np.zeros((8, 8), bool)
    inside[1:6, 1:6] = True  # padding 3 = 1 before + 2 after, on both axes
    assert (px[:, inside] == 255).all() and (px[:, ~inside] == 0).all()


def test_preprocess_converts_other_modes_and_fills_out():
    gray = Image.fromarray(noise(30, 20)[..., 0])
    out = np.full((3, 16, 16), np.nan, np.float32)
    assert preprocess(gray, SMALL, out=out) is out
    assert np.array_equal(out, preprocess(gray.convert("RGB"), SMALL))
    with pytest.raises(ValueError, match="out must be"):
        preprocess(gray, SMALL, out=np.empty((3, 8, 8), np.float32))


def test_preprocess_config_errors():
    img = Image.new("RGB", (8, 8))
    with pytest.raises(ConfigError, match="interpolation 'lanczos' is not supported"):
        preprocess(img, PreprocessConfig(interpolation="lanczos"))
    with pytest.raises(ConfigError, match="crop 'random'"):
        preprocess(img, PreprocessConfig(crop="random"))


def test_extreme_aspect_ratio_is_refused(monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 10_000)
    with pytest.raises(ImageLoadError, match="aspect ratio too extreme"):
        preprocess(Image.new("RGB", (1, 2000)), SMALL)


# ---- collect_images -------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [
        "b.jpg",
        "a.PNG",
        "c.txt",
        ".hidden.jpg",
        "sub/d.webp",
        "sub/e.jpeg",
        ".git/f.jpg",
        "z/g.tif",
    ]:
        path = Path("root", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return Path("root")


def names(paths: list[Path]) -> list[str]:
    return [p.as_posix() for p in paths]


def test_collect_folder_is_recursive_sorted_and_skips_hidden(tree):
    assert names(collect_images(["root"])) == [
        "root/a.PNG",
        "root/b.jpg",
        "root/sub/d.webp",
        "root/sub/e.jpeg",
        "root/z/g.tif",
    ]


def test_collect_explicit_files_and_globs(tree):
    assert names(collect_images([Path("root/c.txt")])) == ["root/c.txt"]  # kept: fails later if no image
    assert names(collect_images(["root/*.jpg"])) == ["root/b.jpg"]
    assert names(collect_images(["root/**/*.jp*g"])) == ["root/b.jpg", "root/sub/e.jpeg"]
    assert names(collect_images(["root/s*"])) == ["root/sub/d.webp", "root/sub/e.jpeg"]  # folders scanned
    assert names(collect_images(["root/*"])) == names(collect_images(["root"]))  # c.txt filtered out


def test_collect_removes_duplicates_keeping_first_place(tree):
    found = collect_images(
        ["root/sub/d.webp", "root", "./root/b.jpg", "root/*.jpg", str(Path.cwd() / "root/a.PNG")]
    )
    assert names(found) == ["root/sub/d.webp", "root/a.PNG", "root/b.jpg", "root/sub/e.jpeg", "root/z/g.tif"]


def test_collect_errors(tree):
    with pytest.raises(SacvitError, match="^missing.jpg: no such file or folder$"):
        collect_images(["root", "missing.jpg"])
    with pytest.raises(SacvitError, match=r"^root/\*\.gif: glob matched no files$"):
        collect_images(["root/*.gif"])
    Path("empty/deeper").mkdir(parents=True)
    Path("empty/notes.txt").write_text("x")
    with pytest.raises(SacvitError, match="^no images found in empty, root/c.t"):
        collect_images(["empty", "root/c.t*"])
    with pytest.raises(SacvitError, match="no images found"):
        collect_images([])


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


# ---- iter_batches ---------------------------------------------------------------------------------
@pytest.fixture
def mixed(tmp_path) -> list[Path]:
    """g0, bad1, g2, g3, bad4, g5, g6."""
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        if i in (1, 4):
            path.write_bytes(b"" if i == 1 else b"not an image")
        else:
            Image.fromarray(noise(24 + i, 20, seed=i)).save(path)
        paths.append(path)
    return paths


def expected(path: Path) -> np.ndarray:
    return preprocess(load_image(path), SMALL)


def test_batches_keep_order_and_report_failures(mixed):
    batches = list(iter_batches(mixed, SMALL, batch_size=3))
    assert [b.index for b in batches] == [0, 1, 2]
    assert [[p.name for p in b.paths] for b in batches] == [["0.png", "2.png"], ["3.png", "5.png"], ["6.png"]]
    assert [[f.path.name for f in b.failures] for b in batches] == [["1.png"], ["4.png"], []]
    assert "empty file" in batches[0].failures[0].reason and "not an image" in batches[1].failures[0].reason
    for b in batches:
        assert b.images.dtype == np.float32 and b.images.shape == (len(b.paths), 3, 16, 16)
        assert np.array_equal(b.images, np.stack([expected(p) for p in b.paths]))


@pytest.mark.parametrize(("workers", "prefetch"), [(1, 1), (3, 4)])
def test_batch_of_one_and_all_bad_batches(mixed, workers, prefetch):
    batches = list(iter_batches([str(p) for p in mixed], SMALL, 1, workers=workers, prefetch=prefetch))
    assert [len(b.paths) for b in batches] == [1, 0, 1, 1, 0, 1, 1]
    assert batches[1].images.shape == (0, 3, 16, 16) and batches[1].images.dtype == np.float32
    assert [f.path for f in batches[4].failures] == [mixed[4]]
    assert np.array_equal(batches[6].images[0], expected(mixed[6]))
    pair = list(iter_batches([mixed[1], mixed[4], mixed[0]], SMALL, 2))
    assert pair[0].images.shape == (0, 3, 16, 16) and len(pair[0].failures) == 2
    assert pair[1].paths == [mixed[0]]


def test_batches_of_nothing_and_bad_arguments(mixed):
    assert list(iter_batches([], SMALL, 4)) == []
    for kw in ({"batch_size": 0}, {"batch_size": 2, "workers": 0}, {"batch_size": 2, "prefetch": 0}):
        with pytest.raises(ValueError, match="must be at least 1"):
            iter_batches(mixed, SMALL, **kw)
    with pytest.raises(ConfigError):  # on the call, not on the first next()
        iter_batches(mixed, PreprocessConfig(interpolation="area"), 2)


def test_preprocess_failure_is_reported_with_its_path(tmp_path, monkeypatch):
    path = save(tmp_path / "thin.png", Image.new("RGB", (1, 2000)))
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 10_000)
    (batch,) = iter_batches([path], SMALL, 4)
    assert batch.failures[0].path == path and "aspect ratio" in batch.failures[0].reason


class CountingLoader:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, source, **options):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return Image.new("RGB", (20, 20))


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sacvit-decode")]


def run_within(seconds: float, fn) -> None:
    errors = []

    def target():
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if errors:
        raise errors[0]


def test_prefetch_bounds_the_work_ahead(monkeypatch):
    loader = CountingLoader()
    monkeypatch.setattr(images_mod, "load_image", loader)
    gen = iter_batches([f"{i}.png" for i in range(20)], SMALL, batch_size=2, prefetch=1)
    first = next(gen)
    assert first.paths == [Path("0.png"), Path("1.png")]
    deadline = time.monotonic() + 30  # a loaded machine may take a while to decode one batch ahead
    while loader.calls < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time to go further, if the bound did not hold
    assert loader.calls == 4  # the batch held by the consumer and one batch ahead
    gen.close()
    assert not decode_threads()


def test_early_close_does_not_hang(monkeypatch):
    loader = CountingLoader(delay=0.02)
    monkeypatch.setattr(images_mod, "load_image", loader)
    gen = iter_batches([f"{i}.png" for i in range(400)], SMALL, batch_size=4)
    next(gen)
    run_within(2.0, gen.close)
    assert loader.calls <= 4 * 3 + 2  # queued work was cancelled
    assert not decode_threads()


def test_keyboard_interrupt_in_consumer_shuts_the_pool(monkeypatch):
    monkeypatch.setattr(images_mod, "load_image", CountingLoader(delay=0.02))

    def consume():
        with pytest.raises(KeyboardInterrupt):
            for _ in iter_batches([f"{i}.png" for i in range(400)], SMALL, batch_size=4):
                raise KeyboardInterrupt

    run_within(2.0, consume)
    assert not decode_threads()


# ---- bundled samples ------------------------------------------------------------------------------
def test_sample_images():
    paths = sample_images()
    assert [p.name for p in paths] == [
        "astronaut.jpg",
        "camera.png",
        "chelsea.jpg",
        "coffee.jpg",
        "coins.jpg",
        "horse.png",
        "hubble_deep_field.jpg",
        "rocket.jpg",
    ]
    assert sum(p.stat().st_size for p in paths) < 500_000
    sources = (paths[0].parent / "SOURCES.md").read_text()
    for p in paths:
        assert p.name in sources
        with Image.open(p) as raw:
            assert min(raw.size) == 256
            assert (raw.mode == "L") == (p.stem in ("camera", "coins", "horse"))
    (batch,) = iter_batches(paths, PreprocessConfig(), batch_size=len(paths))
    assert not batch.failures and batch.images.shape == (8, 3, 224, 224)
