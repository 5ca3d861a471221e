"""Seeded mutations of real files through every loader, run by test_untrusted in a
child process under a memory limit (a crash there is a failed test, not a dead run).

Prints one JSON object: loader -> {exception type: example message} for anything
that escaped as something other than SvmtoolError; {} everywhere is a pass.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from conftest import cifar_archive, make_tiny, python_batch
from PIL import Image
from test_model import small_model

from svmtool.errors import SvmtoolError
from svmtool.io import cifar, images
from svmtool.io import model as model_io
from svmtool.io.download import safe_extract


def mutate(rng: random.Random, data: bytes, regions: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        lo, hi = rng.choice(regions)
        k = rng.randrange(lo, max(lo + 1, min(hi, len(out))))
        r = rng.random()
        if r < 0.6:
            out[k : k + 1] = bytes([rng.randrange(256)])
        elif r < 0.8:
            del out[k : k + rng.randint(1, 8)]
        else:
            out[k:k] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


def main(count: int) -> None:
    rng = random.Random(0)
    tmp = Path(tempfile.mkdtemp())
    escaped: dict[str, dict[str, str]] = {}

    def attempt(kind: str, call) -> None:
        try:
            call()
        except SvmtoolError:
            pass
        except Exception as exc:
            escaped.setdefault(kind, {}).setdefault(type(exc).__name__, str(exc)[:120])

    tiny = make_tiny()
    batch = python_batch(tiny.train_images[:3], tiny.train_labels[:3])
    model = model_io.save(small_model(), tmp / "m.npz").read_bytes()
    with zipfile.ZipFile(io.BytesIO(model)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    pictures = []
    for mode, fmt in (("RGB", "PNG"), ("RGBA", "PNG"), ("L", "JPEG")):
        buffer = io.BytesIO()
        Image.new(mode, (9, 7), 90).save(buffer, format=fmt)
        pictures.append(buffer.getvalue())
    tar = gzip.decompress(cifar_archive(tiny, "binary"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        tar_members = archive.getmembers()
    for _ in range(count):
        path = tmp / "batch"
        path.write_bytes(mutate(rng, batch, [(0, 300), (len(batch) - 600, len(batch))]))
        attempt("pickle", lambda p=path: cifar._read_python_batch(p))

        name = rng.choice(sorted(members))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for n, content in members.items():
                zf.writestr(n, mutate(rng, content, [(0, 128)]) if n == name else content)
        (tmp / "f.npz").write_bytes(buffer.getvalue())
        attempt("model", lambda: model_io.load(tmp / "f.npz"))

        picture = rng.choice(pictures)
        (tmp / "x.img").write_bytes(mutate(rng, picture, [(0, len(picture))]))
        attempt("image", lambda: images.read_image(tmp / "x.img", (4, 4, 3)))

        headers = [(m.offset, m.offset + 512) for m in tar_members]
        (tmp / "a.tar").write_bytes(mutate(rng, tar, headers))
        shutil.rmtree(tmp / "out", ignore_errors=True)
        attempt("tar", lambda: safe_extract(tmp / "a.tar", tmp / "out", 10**8, 100))
    print(json.dumps(escaped))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    np.seterr(all="ignore")
    main(int(sys.argv[1]))
