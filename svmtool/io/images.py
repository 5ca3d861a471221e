"""PNG output: class templates, the labelled montage, and optional plots."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from svmtool.errors import SvmtoolError
from svmtool.io.files import new_file_mode, open_regular, remove_tree
from svmtool.terminal import clean

FILENAME_CHARS = 48  # a class name's part of a file name (file systems allow 255 bytes)


def safe_filename(name: str) -> str:
    """A class name as a portable file-name fragment ('automobile' stays, 'a/b c' -> 'a_b_c').

    Only ASCII letters, digits, '.', '_' and '-', never starting with '.', at
    most FILENAME_CHARS characters: a longer name is cut and ends in a hash of
    the whole name, so names that differ only after the cut stay apart.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
    if len(cleaned) <= FILENAME_CHARS:
        return cleaned
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return cleaned[: FILENAME_CHARS - len(digest) - 1].rstrip("._-") + "-" + digest


def templates(W: np.ndarray, image_shape: tuple[int, ...], scale: str = "global") -> np.ndarray:
    """Class weights as uint8 images (C, H, W, channels).

    W: (D+1, C) with the bias row last. ``global`` maps the min and max over
    all classes to 0 and 255 (CS231n's way, so classes compare); ``per-class``
    stretches each class on its own.
    """
    if scale not in ("global", "per-class"):
        raise SvmtoolError(f"scale must be 'global' or 'per-class', got {scale!r}")
    weights = np.asarray(W[:-1], dtype=np.float64).T.reshape(-1, *image_shape)
    axes = tuple(range(1, weights.ndim))
    if scale == "global":
        lo, hi = weights.min(), weights.max()
    else:
        lo = weights.min(axis=axes, keepdims=True)
        hi = weights.max(axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.rint(255.0 * (weights - lo) / span).astype(np.uint8)


def to_pil(image: np.ndarray, zoom: int = 1) -> Image.Image:
    """(H, W, 1|3) uint8 to a grayscale or RGB image, enlarged ``zoom`` times (nearest)."""
    channels = image.shape[-1]
    if channels == 1:
        pil = Image.fromarray(np.ascontiguousarray(image[..., 0]))
    elif channels == 3:
        pil = Image.fromarray(np.ascontiguousarray(image))
    else:
        # Other channel counts have no colour meaning: show their mean as grey.
        pil = Image.fromarray(np.rint(image.mean(axis=-1)).astype(np.uint8))
    if zoom > 1:
        pil = pil.resize((pil.width * zoom, pil.height * zoom), Image.Resampling.NEAREST)
    return pil


LABEL_CHARS = 16  # a longer class name is cut to this many characters, the last one "…"


def montage_label(name: str) -> str:
    """A class name as the montage shows it: control characters escaped, long names cut."""
    text = clean(name)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def montage(images: list[Image.Image], names: list[str], columns: int | None = None) -> Image.Image:
    """All templates in one grid, each with its class name underneath.

    The labels have one size whatever the zoom, and each cell is as wide as
    the wider of its picture and the longest label, so labels never overlap.
    """
    font = ImageFont.load_default()
    labels = [montage_label(n) for n in names]
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [probe.textbbox((0, 0), t, font=font) for t in [*labels, "Wg"]]
    label_w = max(b[2] - min(b[0], 0) for b in boxes)
    label_h = max(b[3] for b in boxes) + 4
    columns = columns or min(len(images), 5)
    rows = -(-len(images) // columns)
    cell_w = max(max(im.width for im in images), label_w)
    cell_h = max(im.height for im in images)
    pad = 6
    mode = "L" if all(im.mode == "L" for im in images) else "RGB"
    white = 255 if mode == "L" else (255, 255, 255)
    sheet = Image.new(
        mode, (columns * (cell_w + pad) + pad, rows * (cell_h + label_h + pad) + pad), white
    )
    draw = ImageDraw.Draw(sheet)
    for i, (im, text) in enumerate(zip(images, labels, strict=True)):
        x = pad + (i % columns) * (cell_w + pad)
        y = pad + (i // columns) * (cell_h + label_h + pad)
        sheet.paste(im.convert(mode), (x + (cell_w - im.width) // 2, y))
        left = x + (cell_w - int(draw.textlength(text, font=font))) // 2
        draw.text((left, y + cell_h + 2), text, fill=0 if mode == "L" else (0, 0, 0), font=font)
    return sheet


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def loss_plot(history: np.ndarray, path: Path) -> None:
    """Loss against iteration, axes labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(np.arange(len(history)), history, lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("minibatch loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def grid_heatmap(grid: list[dict], path: Path) -> None:
    """Validation accuracy over lr x reg, each cell labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The full-batch solver has no lr (null): its regs form one row.
    lrs = sorted({g["lr"] for g in grid}, key=lambda v: -1.0 if v is None else v)
    regs = sorted({g["reg"] for g in grid})
    acc = np.full((len(lrs), len(regs)), np.nan)
    for g in grid:
        value = g.get("val_accuracy")
        acc[lrs.index(g["lr"]), regs.index(g["reg"])] = np.nan if value is None else value
    fig, ax = plt.subplots(figsize=(1.2 * len(regs) + 2.5, 0.6 * len(lrs) + 2), dpi=100)
    im = ax.imshow(acc, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(regs)), [f"{r:g}" for r in regs])
    ax.set_yticks(range(len(lrs)), ["full batch" if lr is None else f"{lr:g}" for lr in lrs])
    ax.set_xlabel("reg")
    ax.set_ylabel("lr")
    ax.set_title("validation accuracy")
    lo, hi = np.nanmin(acc, initial=np.inf), np.nanmax(acc, initial=-np.inf)
    middle = (lo + hi) / 2 if np.isfinite(lo) else 0.0
    for i in range(len(lrs)):
        for j in range(len(regs)):
            value = acc[i, j]
            text = "diverged" if np.isnan(value) else f"{value:.3f}"
            # Dark text on the light (high) end of viridis, light text elsewhere.
            color = "black" if not np.isnan(value) and value > middle else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


MANIFEST = ".svmtool-visualize.json"
"""What visualize wrote into a folder (name -> sha256), so that the next run
removes its own outputs that it no longer writes, and nothing else."""

_MANIFEST_MAX_BYTES = 1 << 20
_OUTPUT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.png")


@dataclass
class Written:
    """The files a visualize run wrote, and the earlier outputs it removed."""

    written: list[Path]
    removed: list[Path]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(out_dir: Path) -> dict[str, str]:
    """The previous run's outputs; anything unexpected in the file means none."""
    path = out_dir / MANIFEST
    try:
        if not stat.S_ISREG(path.lstat().st_mode) or path.lstat().st_size > _MANIFEST_MAX_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {
        name: digest
        for name, digest in files.items()
        if isinstance(name, str)
        and _OUTPUT_NAME.fullmatch(name)
        and isinstance(digest, str)
        and len(digest) == 64
    }


def _folders_in_the_way(out_dir: Path, names: list[str]) -> list[str]:
    blocked = []
    for name in names:
        try:
            if stat.S_ISDIR((out_dir / name).lstat().st_mode):
                blocked.append(name)
        except FileNotFoundError:
            pass
    return blocked


def write_outputs(out_dir: Path, files: dict[str, object]) -> Written:
    """Write every file into a scratch folder beside ``out_dir``, then move them
    in, then remove what an earlier run wrote there and this one does not (a
    file the user changed since is kept). The whole destination is checked
    first: an error leaves ``out_dir`` as it was.

    files: name -> a PIL image, or a callable taking the destination path.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SvmtoolError(f"--out-dir {out_dir} exists and is not a folder")
    if out_dir.is_dir():
        blocked = _folders_in_the_way(out_dir, [*files, MANIFEST])
        if blocked:
            raise SvmtoolError(
                f"--out-dir {out_dir}: {', '.join(blocked)} "
                + ("is a folder" if len(blocked) == 1 else "are folders")
                + "; nothing was written (move it away or choose another --out-dir)"
            )
    previous = _read_manifest(out_dir) if out_dir.is_dir() else {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        digests = {}
        for name, content in files.items():
            target = scratch / name
            if isinstance(content, Image.Image):
                content.save(target, format="PNG")
            else:
                content(target)  # type: ignore[operator]
            digests[name] = _sha256(target)
        out_dir.mkdir(exist_ok=True)
        written = []
        for name in files:
            destination = out_dir / name
            # A replaced PNG keeps its permissions; a new one follows the umask.
            os.chmod(scratch / name, new_file_mode(destination))
            (scratch / name).replace(destination)
            written.append(destination)
        removed, kept = [], {}
        for name, digest in previous.items():
            if name in files:
                continue
            stale = out_dir / name
            try:
                if stat.S_ISREG(stale.lstat().st_mode) and _sha256(stale) == digest:
                    stale.unlink()
                    removed.append(stale)
            except FileNotFoundError:
                pass
            except OSError:
                kept[name] = digest  # still ours: the next run tries again
        manifest = scratch / MANIFEST
        record = {"written_by": "svmtool visualize", "files": {**kept, **digests}}
        manifest.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        manifest.replace(out_dir / MANIFEST)
        return Written(written, removed)
    finally:
        remove_tree(scratch)


# predict reads only these (Image.open(formats=...)): no other decoder, and no
# external program (Pillow hands EPS to Ghostscript), is ever reached.
IMAGE_FORMATS = ("PNG", "JPEG")
# Transparent pixels are shown over white, as an image viewer or a web page shows them.
BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _as_8bit_gray(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale scaled to 0..255, keeping tRNS transparency."""
    values = np.asarray(im, dtype=np.float64)
    top = 65535.0 if im.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    gray = np.rint(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8)
    transparent = im.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([gray, alpha]), "LA")
    return Image.fromarray(gray, "L")


def _as_shown(im: Image.Image) -> Image.Image:
    """The image as a viewer shows it: EXIF orientation applied, 16-bit gray
    scaled (not clipped to white), transparency composited over white. RGB."""
    with contextlib.suppress(Exception):  # unreadable EXIF: shown as stored, as a viewer does
        im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        im = _as_8bit_gray(im)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


@contextlib.contextmanager
def _decoding(path: Path, size: list):
    """Pillow's errors while opening or decoding ``path`` as one SvmtoolError each.
    ``size`` receives the image's size once known (for the out-of-memory message)."""
    try:
        with warnings.catch_warnings():
            # Pillow's other warnings (corrupt EXIF, ...) are not the user's business;
            # it only warns between its pixel limit and twice it, then decodes anyway.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise SvmtoolError(
            f"{path}: refusing an image of {pixels}, over the limit of"
            f" {Image.MAX_IMAGE_PIXELS:,} (it could be a decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise SvmtoolError(f"{path}: cannot read the image (not a PNG or JPEG file)") from None
    except MemoryError:
        size_text = size[0] if size else None
        raise SvmtoolError(f"{path}: not enough memory to decode a {size_text} image") from None
    except SvmtoolError:
        raise
    except Exception as exc:  # a decoder fed hostile bytes may raise anything
        raise SvmtoolError(f"{path}: cannot read the image ({exc})") from None


def read_image(path: Path, image_shape: tuple[int, ...], follow: bool = True) -> np.ndarray:
    """A PNG or JPEG file (any size, RGB or grayscale, 8 or 16 bits) as uint8
    image_shape (H, W, C), read as a viewer shows it (see ``_as_shown``).

    Images over Pillow's pixel limit (Image.MAX_IMAGE_PIXELS) are refused,
    never decoded. ``follow=False`` refuses a symbolic link (image folders).
    """
    h, w, c = image_shape
    if c not in (1, 3):
        raise SvmtoolError(f"{path}: the model has {c} channels; only 1 or 3 can come from a file")
    size: list = []
    with (
        open_regular(path, "image", follow=follow) as f,
        _decoding(path, size),
        Image.open(f, formats=IMAGE_FORMATS) as im,
    ):
        size.append(im.size)
        im.load()
        shown = _as_shown(im)
    converted = shown if c == 3 else shown.convert("L")
    resized = converted.resize((w, h), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    return array.reshape(h, w, c)


# Modes whose pixels are one gray value (``_as_shown`` turns them into R = G = B).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "F", *_SIXTEEN_BIT})
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def probe_image(path: Path, follow: bool = True) -> tuple[int, int, bool]:
    """(height, width, grayscale) of a PNG or JPEG as ``read_image`` shows it
    (EXIF rotation applied), from its header only: no pixel is decoded.
    The same files are refused as by ``read_image`` (format, pixel limit)."""
    size: list = []
    with (
        open_regular(path, "image", follow=follow) as f,
        _decoding(path, size),
        Image.open(f, formats=IMAGE_FORMATS) as im,
    ):
        width, height = im.size
        gray = im.mode in GRAY_MODES
        orientation = None
        with contextlib.suppress(Exception):  # unreadable EXIF: shown as stored
            orientation = im.getexif().get(0x0112)
    if orientation in _TRANSPOSED:
        width, height = height, width
    return height, width, gray


def kink_plot(curve, path) -> None:
    """The loss along one coordinate around a kink, the two points of the centered
    difference, their secant, and the analytic slope (a KinkCurve from gradcheck).

    Below it, the same lines minus the analytic tangent: the corner, a change of
    slope of about |x_nd| / N, is too small to see on the loss itself.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = curve.h
    t = curve.offsets / h  # in units of h: the picture reads the same for any h
    ends = np.array([t.min(), t.max()])
    at = np.interp([-1.0, 1.0], t, curve.losses)
    fig, axes = plt.subplots(2, 1, figsize=(7, 6.4), dpi=100, sharex=True)
    for ax, tangent in ((axes[0], 0.0), (axes[1], curve.analytic)):
        ax.plot(t, curve.losses - tangent * t * h, color="black", lw=1.5, label="the loss")
        ax.plot(
            ends,
            (curve.numeric - tangent) * ends * h,
            "--",
            color="tab:orange",
            lw=1.2,
            label=f"secant through W ± h e: slope {curve.numeric:.6g}",
        )
        ax.plot(
            ends,
            (curve.analytic - tangent) * ends * h,
            ":",
            color="tab:blue",
            lw=1.8,
            label=f"analytic gradient: slope {curve.analytic:.6g}",
        )
        ax.plot(
            [-1, 1],
            at - tangent * np.array([-1, 1]) * h,
            "o",
            color="tab:orange",
            label="the two points of the centered difference",
        )
        for i, k in enumerate(curve.kinks):
            ax.axvline(
                k / h,
                color="tab:red",
                alpha=0.6,
                lw=1,
                label="a margin crosses 0: the kink" if i == 0 else None,
            )
        ax.grid(alpha=0.3)
    axes[0].set_title(f"loss along W[{curve.d}, {curve.c}]: the ±h step straddles a kink")
    axes[0].set_ylabel("L(W + t e) - L(W)")
    axes[0].legend(fontsize=8, loc="best")
    axes[1].set_ylabel("minus the analytic tangent")
    axes[1].set_xlabel(f"t / h   (h = {h:g})")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def sweep_plot(points, path) -> None:
    """Fraction of coordinates straddling a kink, and of margins near one, against
    delta, for each point (``points``: [(label, [SweepRow])])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for (label, rows), color in zip(points, ("tab:blue", "tab:red"), strict=False):
        deltas = [r.delta for r in rows]
        ax.plot(deltas, [100 * r.straddled_fraction for r in rows], "o-", color=color,
                label=f"coordinates straddling, at {label}")  # fmt: skip
        ax.plot(deltas, [100 * r.near_kink_fraction for r in rows], "s--", color=color,
                alpha=0.6, label=f"margins near a kink, at {label}")  # fmt: skip
        if all(r.expected_straddled_fraction is not None for r in rows):
            ax.plot(deltas, [100 * r.expected_straddled_fraction for r in rows], "^:",
                    color="tab:green", label="coordinates straddling, expected at a random"
                    " check point")  # fmt: skip
    positive = [r.delta for _, rows in points for r in rows if r.delta > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("delta")
    ax.set_ylabel("%")
    ax.set_title("how delta changes the frequency of kinks (every coordinate of W)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def centroid_patches(
    centroids: np.ndarray, whiten_mean: np.ndarray, whiten: np.ndarray, channels: int
) -> np.ndarray:
    """k-means centroids mapped back through the ZCA whitening to 6x6 patches:
    (K, 36*C) -> (K, 6, 6, C) uint8, each stretched around its mean to 0-255.

    The whitening is x = (p - mean) @ whiten with ``whiten`` symmetric and
    invertible (its eigenvalues are 1 / sqrt(d + eps)), so p = x @ whiten^-1 + mean.
    """
    from svmtool.core.kmeans import PATCH

    patches = np.linalg.solve(whiten.T, centroids.astype(np.float64).T).T + whiten_mean
    patches -= patches.mean(axis=1, keepdims=True)
    peak = np.abs(patches).max(axis=1, keepdims=True)
    patches /= np.where(peak > 0, peak, 1.0)
    out = np.rint(127.5 + 127.5 * patches).clip(0, 255).astype(np.uint8)
    return out.reshape(-1, PATCH, PATCH, channels)


def patch_montage(patches: np.ndarray, zoom: int = 4, columns: int | None = None) -> Image.Image:
    """Small (K, h, w, C) uint8 patches in a grid with 1-pixel gaps, enlarged ``zoom`` times."""
    k, h, w, _ = patches.shape
    columns = columns or max(1, int(np.ceil(np.sqrt(k))))
    rows = -(-k // columns)
    tiles = [to_pil(p, zoom) for p in patches]
    mode = tiles[0].mode
    sheet = Image.new(mode, (columns * (w * zoom + 1) + 1, rows * (h * zoom + 1) + 1), 0)
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (1 + (i % columns) * (w * zoom + 1), 1 + (i // columns) * (h * zoom + 1)))
    return sheet


def hog_cell_maps(W: np.ndarray, image_shape: tuple[int, ...], cell: int = 8) -> np.ndarray:
    """Each class's weight per HOG cell: the sum of its 9 orientation weights.

    W: (F+1, C) of a hog model (HOG cells first, then the hue bins, bias last).
    Returns (C, cell rows, cell columns) float64.
    """
    from svmtool.core.features import ORIENTATIONS, hog_cells

    rows, cols, _, _ = hog_cells(image_shape[:2], cell)
    cells = np.asarray(W[: rows * cols * ORIENTATIONS], dtype=np.float64)
    return cells.T.reshape(-1, rows, cols, ORIENTATIONS).sum(axis=3)


def diverging(maps: np.ndarray) -> np.ndarray:
    """Signed maps (C, h, w) as RGB uint8 (C, h, w, 3) on one scale for all:
    red where positive (evidence for the class), blue where negative, white at 0."""
    peak = np.abs(maps).max()
    t = maps / peak if peak > 0 else np.zeros_like(maps)
    out = np.empty((*maps.shape, 3))
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    out[..., 0] = 1 - neg
    out[..., 1] = 1 - pos - neg
    out[..., 2] = 1 - pos
    return np.rint(255 * out).astype(np.uint8)
