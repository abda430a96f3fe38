"""Images in, model-ready batches out.

- :func:`load_image`: a file Pillow can read, a PIL image or a numpy array -> an 8-bit RGB PIL image,
  EXIF orientation applied. Every way a file can be bad ends in :class:`ImageLoadError`, one line
  that names the file.
- :func:`preprocess`: DeiT's evaluation transform, computing what timm/torchvision compute on a PIL
  image (shorter-side resize, center crop, ToTensor, Normalize).
- :func:`collect_images`: files, folders and glob patterns -> the image paths to run, in a stable order.
- :func:`iter_batches`: decoding and preprocessing on a thread pool, a few batches ahead of inference.
- :func:`sample_images`: real photos bundled with the package (public domain / CC0, see SOURCES.md).

Conversion choices (timm's loader just calls ``Image.open(f).convert("RGB")``):

- Transparent pixels (RGBA, LA, PA, palette or grayscale/RGB with a ``transparency`` entry) are
  composited on WHITE, as image viewers show them. ``convert("RGB")`` would drop alpha and expose
  whatever colour the transparent pixels happen to store (often black). ImageNet photos are opaque
  JPEGs, so accuracy comparisons with timm are unaffected.
- 16-bit samples (``I;16*`` files, ``I`` files, uint16 arrays) are scaled to 8 bits,
  ``round(v * 255 / 65535)``. Pillow's own ``convert("L")`` clips them instead: a 16-bit image
  becomes almost all white.
- Float samples (``F`` files, float arrays) must lie in [0, 1] (torchvision's reading of floats);
  anything else is refused rather than guessed.
- No colour management: ICC profiles are ignored, as in timm and torchvision. CMYK and YCbCr use
  Pillow's conversions.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, Generator, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sacvit_deploy.core.config import PreprocessConfig
from sacvit_deploy.core.errors import ConfigError, SacvitError
from sacvit_deploy.core.fileinfo import not_a_regular_file
from sacvit_deploy.core.package_data import package_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# Twice Pillow's default MAX_IMAGE_PIXELS: the size at which Pillow itself refuses a file. Read at
# every load, so a caller who trusts bigger files can raise it. Pillow still warns (it does not fail)
# between its own MAX_IMAGE_PIXELS and this limit.
MAX_PIXELS = 178_956_970

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_GLOB_CHARS = re.compile(r"[*?[]")
_PILLOW_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class ImageLoadError(SacvitError):
    """An image that cannot be read or preprocessed; ``str()`` is ``"{path}: {reason}"``."""

    def __init__(self, path: Union[Path, str], reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = _one_line(reason)

    def __str__(self) -> str:
        return f"{_one_line(self.path)}: {self.reason}"


# ---- loading ------------------------------------------------------------------------------------
_decoding = threading.local()


def decoding() -> Optional[Path]:
    """The file this thread is loading now, if any: what a warning Pillow raises while it parses a
    file's metadata ("Corrupt EXIF data", "Tag data larger than file") is about, though the warning
    does not say so."""
    return getattr(_decoding, "path", None)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    _decoding.path = path
    try:
        yield
    finally:
        _decoding.path = None


def load_image(
    source: Union[str, os.PathLike[str], Image.Image, np.ndarray],
    *,
    min_side: Optional[int] = None,
) -> Image.Image:
    """Return ``source`` as an 8-bit RGB PIL image with its EXIF orientation applied.

    ``source`` is a path, a PIL image (left untouched; a converted copy is returned) or a numpy
    array of shape HxW, HxWx3 or HxWx4 holding uint8, uint16 or floats in [0, 1]. Animated or
    multi-page files give their first frame. Raises :class:`ImageLoadError` for anything unreadable.
    ``min_side``: the shorter side the caller will resize to; a JPEG over :data:`DRAFT_PIXELS` may
    then be decoded at a reduced scale (see :func:`_draft`).
    """
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "<PIL image>"
        return _to_rgb(_decode(source, name), name)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with _naming(path):
            return _load_file(path, min_side)
    raise TypeError(f"load_image takes a path, a PIL image or a numpy array, not {type(source).__name__}")


def _load_file(path: Path, min_side: Optional[int] = None) -> Image.Image:
    problem = not_a_regular_file(path)
    if problem == "no such file":
        raise ImageLoadError(path, "file not found")
    if problem == "is a folder":
        raise ImageLoadError(path, "is a folder, not an image file")
    if problem is not None:
        raise ImageLoadError(path, problem)
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if st.st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    im: Optional[Image.Image] = None
    decoded: Optional[Image.Image] = None
    try:
        im = Image.open(path)
        _check_pixels(path, im.size)
        _draft(im, min_side)
        # One frame: Pillow closes the file after load(), so the opened image itself can be kept
        # (no copy of a 168-Mpx image); multi-frame files keep their file open: copy the frame.
        decoded = _decode(im, path, in_place=getattr(im, "n_frames", 1) == 1)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied; make the file readable") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            path, f"not an image, or a format Pillow cannot read (file suffix {path.suffix or 'none'!r})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check, which runs before ours can (the warning only arrives here when the
        # caller's warning filters turn it into an error).
        raise _pillow_bomb_error(path, exc) from None
    except OSError as exc:  # an I/O error while Pillow reads the header
        raise ImageLoadError(path, f"cannot read the file ({exc})") from None
    except MemoryError:
        raise ImageLoadError(path, "out of memory while decoding it") from None
    except Exception as exc:
        # Pillow's header parsers raise ValueError (a PPM renamed .png: "invalid literal for int()";
        # a PNG text-chunk bomb), SyntaxError, struct.error, IndexError...: all this file's problem.
        raise ImageLoadError(path, f"corrupt or unsupported image ({type(exc).__name__}: {exc})") from None
    finally:
        if im is not None and decoded is not im:
            im.close()
    try:
        return _to_rgb(decoded, path)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(path, "out of memory while converting it to RGB") from None
    except Exception as exc:
        raise ImageLoadError(path, f"cannot convert it to RGB ({type(exc).__name__}: {exc})") from None


# JPEGs above this many pixels are decoded at a reduced scale (Pillow's draft: the DCT scaling of
# libjpeg, 1/2, 1/4 or 1/8), keeping the shorter side at least DRAFT_MARGIN times what the resize
# needs: a 24-Mpx photo costs a fraction of its full decode, and the antialiased resize that follows
# hides the difference. Smaller images decode in full, exactly as timm/torchvision decode them.
DRAFT_PIXELS = 16_000_000
DRAFT_MARGIN = 4


def _draft(im: Image.Image, min_side: Optional[int]) -> None:
    if min_side is None or im.format != "JPEG" or im.size[0] * im.size[1] <= DRAFT_PIXELS:
        return
    width, height = im.size
    scale = min(width, height) / (DRAFT_MARGIN * min_side)
    if scale >= 2:
        im.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))


def _decode(im: Image.Image, name: Union[Path, str], in_place: bool = False) -> Image.Image:
    """Fully decode ``im`` (a truncated file fails here, not later) and apply EXIF orientation.

    Returns a new image (the caller may close ``im`` afterwards), or with ``in_place`` (a file this
    module opened) ``im`` itself when it needs no rotation: no second copy of a big image.
    """
    try:
        im.load()
        if in_place:
            ImageOps.exif_transpose(im, in_place=True)  # without rotation, no copy
            return im
        return ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:
        # Pillow reports broken data as OSError, SyntaxError, ValueError, EOFError, struct.error,
        # zlib.error...; all of them mean the same thing to the user.
        raise ImageLoadError(name, f"truncated or corrupt image ({type(exc).__name__}: {exc})") from None


def _check_pixels(name: Union[Path, str], size: Tuple[int, int]) -> None:
    pixels = size[0] * size[1]
    if pixels > MAX_PIXELS:
        raise ImageLoadError(name, _bomb_reason(pixels, MAX_PIXELS, "MAX_PIXELS"))


def _bomb_reason(pixels: Union[int, str], limit: int, knob: str) -> str:
    return f"decompression bomb: {pixels} pixels exceeds the limit of {limit}; raise {knob} if you trust the file"


def _pillow_bomb_error(path: Path, exc: Exception) -> ImageLoadError:
    found = _PILLOW_BOMB_SIZE.search(str(exc))
    pixels = int(found.group(1)) if found else "too many"
    pillow_limit = Image.MAX_IMAGE_PIXELS or 0
    if isinstance(exc, Image.DecompressionBombError):
        pillow_limit *= 2
    if isinstance(pixels, int) and pixels <= MAX_PIXELS:
        # Our limit was raised above Pillow's: only raising Pillow's too lets the file through.
        return ImageLoadError(path, _bomb_reason(pixels, pillow_limit, "PIL.Image.MAX_IMAGE_PIXELS"))
    return ImageLoadError(path, _bomb_reason(pixels, min(MAX_PIXELS, pillow_limit), "MAX_PIXELS"))


# ---- conversion to 8-bit RGB --------------------------------------------------------------------
def _to_rgb(im: Image.Image, name: Union[Path, str]) -> Image.Image:
    mode = im.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _on_white(im.convert("RGBA"))
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im), name)).convert("RGB")
    try:
        return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, RGBX, HSV...
    except ValueError:
        raise ImageLoadError(name, f"unsupported colour mode {mode}; convert the image to RGB") from None


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_uint8(a: np.ndarray, name: Union[Path, str]) -> np.ndarray:
    """8-bit samples of a bool, uint8, 16-bit integer or [0, 1] float array."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype.kind in "ui":
        if a.dtype != np.uint16:
            # Pillow's 32-bit "I" mode: 16-bit samples in a wider type (older Pillows read 16-bit
            # PNGs this way).
            a = np.clip(a, 0, 65535)
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if a.dtype.kind == "f":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise ImageLoadError(
                name,
                f"float pixel values must lie in [0, 1], found [{lo:g}, {hi:g}]; divide 0..255 data by 255",
            )
        return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageLoadError(name, f"unsupported pixel type {a.dtype}; use uint8, uint16 or floats in [0, 1]")


def _from_array(a: np.ndarray) -> Image.Image:
    name = "<array>"
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        hint = "; arrays are channels-last, transpose a CxHxW array first" if a.ndim == 3 else ""
        raise ImageLoadError(name, f"expected an HxW, HxWx3 or HxWx4 array, got shape {a.shape}{hint}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageLoadError(name, f"empty array of shape {a.shape}")
    if a.dtype not in (np.uint8, np.uint16, np.bool_) and a.dtype.kind != "f":
        raise ImageLoadError(name, f"unsupported pixel type {a.dtype}; use uint8, uint16 or floats in [0, 1]")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(_to_uint8(a, name))), name)


# ---- preprocessing ------------------------------------------------------------------------------
# Beyond this a resize is a typo or a tampered manifest (the largest DeiT input is 384 px).
MAX_RESIZE = 4096


def _resample(cfg: PreprocessConfig) -> Image.Resampling:
    """The resampling filter, after checking the preprocessing values every image would trip over."""
    for name in ("resize_size", "input_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or not 1 <= value <= MAX_RESIZE:
            raise ConfigError(
                f"preprocess {name} {value!r}: must be an integer from 1 to {MAX_RESIZE}; fix the manifest "
                "(model.preprocess) or re-export"
            )
    if len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ConfigError(f"preprocess mean/std need 3 values (RGB), got {list(cfg.mean)} / {list(cfg.std)}")
    if not all(math.isfinite(v) for v in cfg.mean) or not all(math.isfinite(v) and v > 0 for v in cfg.std):
        raise ConfigError(
            f"preprocess mean {list(cfg.mean)} / std {list(cfg.std)}: finite numbers, std above 0"
        )
    if cfg.crop != "center":
        raise ConfigError(f"preprocess crop {cfg.crop!r} is not supported; use 'center'")
    try:
        return _RESAMPLE[cfg.interpolation]
    except KeyError:
        raise ConfigError(
            f"preprocess interpolation {cfg.interpolation!r} is not supported; use one of {', '.join(_RESAMPLE)}"
        ) from None


def _resize_output_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """torchvision's ``Resize(size)`` rule: the shorter side becomes ``size``, the longer side is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def preprocess(img: Image.Image, cfg: PreprocessConfig, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """DeiT's evaluation transform: a float32 array of shape (3, R, R), R = ``cfg.input_size``.

    Computes what torchvision's ``Resize(cfg.resize_size, interpolation)`` (shorter side,
    Pillow's resampling), ``CenterCrop(R)`` (zero padding when the image is smaller),
    ``ToTensor()`` and ``Normalize(cfg.mean, cfg.std)`` compute on a PIL image, in float32 with the
    same operation order. ``out``, if given, receives the result (an array of that shape and dtype).
    """
    resample = _resample(cfg)
    crop = cfg.input_size
    if out is None:
        out = np.empty((3, crop, crop), np.float32)
    elif out.shape != (3, crop, crop) or out.dtype != np.float32:
        raise ValueError(
            f"out must be a float32 array of shape (3, {crop}, {crop}), got {out.dtype} {out.shape}"
        )
    if img.mode != "RGB":
        img = _to_rgb(img, "<PIL image>")

    width, height = img.size
    new_w, new_h = _resize_output_size(width, height, cfg.resize_size)
    if new_w * new_h > MAX_PIXELS:
        raise ImageLoadError(
            f"<{width}x{height} image>",
            f"aspect ratio too extreme: resizing its shorter side to {cfg.resize_size} px gives "
            f"{new_w}x{new_h} pixels, over the limit of {MAX_PIXELS}",
        )
    pixels = np.asarray(img.resize((new_w, new_h), resample))  # (h, w, 3) uint8

    # torchvision's CenterCrop: pad with zeros up to the crop size, then Python's round() (half to
    # even) of the centred offset.
    pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
    top = round((pixels.shape[0] - crop) / 2.0)
    left = round((pixels.shape[1] - crop) / 2.0)
    pixels = pixels[top : top + crop, left : left + crop]

    # ToTensor then Normalize: (x / 255 - mean) / std, each step rounded to float32 like torch.
    np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=out)
    out -= np.asarray(cfg.mean, np.float32)[:, None, None]
    out /= np.asarray(cfg.std, np.float32)[:, None, None]
    return out


# ---- finding images -----------------------------------------------------------------------------
def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _scan_folder(root: Path) -> List[Path]:
    """Image files under ``root``, recursively, skipping hidden files and folders (links to folders
    are not followed, so a link cycle cannot loop)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder, f) for f in files if not f.startswith(".") and _is_image_name(Path(f))]
    return sorted(found, key=lambda p: p.parts)


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def collect_images(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """The image files named by ``inputs``: files, folders and glob patterns, in order.

    A file is kept whatever its suffix (it fails later with a clear reason if it is no image). A
    folder gives its images (suffix in :data:`IMAGE_EXTENSIONS`) recursively, sorted, hidden files
    and folders skipped. A glob pattern (``imgs/*.jpg``, ``data/**/*.png``) gives the images it
    matches, sorted; folders it matches are scanned. A file reached twice is kept once, at its first
    place. Raises :class:`SacvitError` for an input that matches nothing, or if no image is found.
    """
    found: Dict[Path, Path] = {}
    for item in inputs:
        raw = os.fspath(item)
        path = Path(raw).expanduser()
        if path.is_dir():
            matches = _scan_folder(path)
        elif path.exists():
            matches = [path]
        elif path.is_symlink():  # a loop or a broken link: say which, not "no such file"
            raise SacvitError(f"{raw}: {not_a_regular_file(path)}")
        elif _GLOB_CHARS.search(raw):
            hits = sorted(
                (Path(h) for h in glob.glob(os.path.expanduser(raw), recursive=True)), key=lambda p: p.parts
            )
            if not hits:
                raise SacvitError(f"{raw}: glob matched no files")
            matches = []
            for hit in hits:
                if hit.is_dir():
                    matches += _scan_folder(hit)
                elif _is_image_name(hit):
                    matches.append(hit)
        else:
            raise SacvitError(f"{raw}: no such file or folder")
        for match in matches:
            found.setdefault(_identity(match), match)
    if not found:
        where = ", ".join(os.fspath(i) for i in inputs) or "(no inputs)"
        raise SacvitError(
            f"no images found in {where}; expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return list(found.values())


def sample_images() -> List[Path]:
    """The sample photos bundled with the package, sorted (origins and licenses: SOURCES.md)."""
    root = package_path("data", "samples")
    paths = sorted(p for p in root.iterdir() if _is_image_name(Path(p.name)))
    if not paths:
        raise SacvitError(f"{root}: no sample images; the sacvit-deploy install is incomplete, reinstall it")
    return paths


# ---- batching -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """One batch of preprocessed images.

    ``images`` is (n, 3, R, R) float32 for the ``n`` images that loaded (``n`` is 0 when all of them
    failed), ``paths`` their files in input order, ``failures`` the others, ``index`` the batch number.
    """

    images: np.ndarray
    paths: List[Path]
    failures: List[ImageLoadError]
    index: int


def iter_batches(
    paths: Sequence[Union[str, Path]],
    cfg: PreprocessConfig,
    batch_size: int,
    workers: int = 2,
    prefetch: int = 2,
) -> Generator[Batch, None, None]:
    """Load and preprocess ``paths`` in batches of ``batch_size``, in input order.

    Decoding runs on ``workers`` threads (Pillow releases the GIL while it decodes and resizes), at
    most ``prefetch`` batches ahead of the batch the consumer holds. A bad file becomes an
    :class:`ImageLoadError` in its batch's ``failures`` and never stops the iteration. Closing the
    generator (``close()``, ``break``, an exception in the consumer) cancels the queued work and
    waits only for the images being decoded at that moment; ``contextlib.closing`` makes that
    deterministic.
    """
    for name, value in (("batch_size", batch_size), ("workers", workers), ("prefetch", prefetch)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    _resample(cfg)  # a bad config fails here, once, rather than once per image
    files = [Path(p) for p in paths]
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    return _batches(chunks, cfg, workers, prefetch)


def _batches(
    chunks: List[List[Path]], cfg: PreprocessConfig, workers: int, prefetch: int
) -> Generator[Batch, None, None]:
    size = cfg.input_size
    pending: Deque[Tuple[np.ndarray, List[Future]]] = deque()  # futures of Optional[ImageLoadError]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sacvit-decode")
    try:
        for index, chunk in enumerate(chunks):
            # Keep batches index .. index + prefetch in flight; each image is its own task, so the
            # workers share a batch and a slow image does not hold the next batch back.
            for ahead in range(index + len(pending), min(index + prefetch + 1, len(chunks))):
                out = np.empty((len(chunks[ahead]), 3, size, size), np.float32)
                futures = [pool.submit(_load_into, p, cfg, out[j]) for j, p in enumerate(chunks[ahead])]
                pending.append((out, futures))
            out, futures = pending.popleft()
            results = [f.result() for f in futures]
            good = [j for j, err in enumerate(results) if err is None]
            yield Batch(
                images=out if len(good) == len(chunk) else out[good],
                paths=[chunk[j] for j in good],
                failures=[err for err in results if err is not None],
                index=index,
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load_into(path: Path, cfg: PreprocessConfig, out: np.ndarray) -> Optional[ImageLoadError]:
    """Decode and preprocess one file into ``out``; whatever goes wrong is this file's error.

    An image over :data:`LARGE_PIXELS` is decoded on one dedicated thread, one at a time, however
    many workers call this: its pixels (3-8 bytes each, 0.5-1.3 GB for 168 Mpx) then live in one
    thread's malloc arena, reused image after image, instead of one arena per worker each keeping
    the memory of the last big image it decoded.
    """
    if _is_large(path):
        return _large_decoder().submit(_decode_into, path, cfg, out).result()
    return _decode_into(path, cfg, out)


def _decode_into(path: Path, cfg: PreprocessConfig, out: np.ndarray) -> Optional[ImageLoadError]:
    try:
        preprocess(load_image(path, min_side=cfg.resize_size), cfg, out=out)
    except ImageLoadError as exc:
        return exc if exc.path == path else ImageLoadError(path, exc.reason)
    except MemoryError:
        return ImageLoadError(path, "out of memory while decoding it")
    except Exception as exc:  # never one file's problem ending the run
        return ImageLoadError(path, f"cannot be decoded or preprocessed ({type(exc).__name__}: {exc})")
    return None


LARGE_PIXELS = 16_000_000
_LARGE_LOCK = threading.Lock()
_LARGE_POOL: Optional[ThreadPoolExecutor] = None


def _large_decoder() -> ThreadPoolExecutor:
    global _LARGE_POOL
    with _LARGE_LOCK:
        if _LARGE_POOL is None:
            _LARGE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sacvit-large-image")
        return _LARGE_POOL


def _is_large(path: Path) -> bool:
    if not_a_regular_file(path) is not None:  # a FIFO would block Image.open; the load names it
        return False
    try:
        with _naming(path), Image.open(path) as im:  # the header only
            return im.size[0] * im.size[1] > LARGE_PIXELS
    except Exception:  # unreadable: the real load reports it
        return False
