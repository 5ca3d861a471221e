"""svmtool download: fetch a dataset (or import an archive), verify it, cache it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import err, resolve_data_dir, say
from svmtool.commands.options import DataDir
from svmtool.errors import BadValue, SvmtoolError, check_choice
from svmtool.terminal import clean

DOWNLOAD_ADVICE = "use --url MIRROR or --from-file ARCHIVE"


def fetch_cifar(data_dir: Path, advice: str = DOWNLOAD_ADVICE, dataset: str = "cifar10", **options):
    """``cifar.download`` (or ``named.download`` for another ``dataset``; same
    options) with a Rich progress bar on stderr, a line for each retry, and
    ``advice`` (which must work from the command that called it) after a failed
    download."""
    from svmtool.io import cifar, named
    from svmtool.io.download import DownloadFailed
    from svmtool.render.progress import download_bar

    bar = None
    task = None

    def report(done: int, total: int | None) -> None:
        nonlocal bar, task
        if bar is None:
            # Shown from the first byte on, so a refused or 404 request prints no bar.
            bar = download_bar(err)
            bar.start()
            task = bar.add_task("download", total=total)
        bar.update(task, completed=done, total=total)

    def retrying(reason: str, delay: float, attempt: int, tries: int) -> None:
        say(f"{reason}, retrying in {delay:g} s ({attempt}/{tries})")

    try:
        if dataset != "cifar10":
            return named.download(dataset, data_dir, progress=report, on_retry=retrying, **options)
        return cifar.download(data_dir, progress=report, on_retry=retrying, **options)
    except DownloadFailed as exc:
        raise SvmtoolError(f"{exc}; {advice}") from None
    finally:
        if bar is not None:
            bar.stop()


def download(
    data_dir: DataDir = None,
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", help="cifar10, cifar100, fashion-mnist or mnist.", metavar="NAME"
        ),
    ] = "cifar10",
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="binary (plain records, the default) or python (CS231n's pickles).",
            metavar="binary|python",
        ),
    ] = "binary",
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="A mirror to fetch from; the checksum still applies.", metavar="URL"
        ),
    ] = None,
    md5: Annotated[
        str | None, typer.Option("--md5", help="The md5 of a different archive.", metavar="HEX")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from-file",
            help="Import an archive you already have (offline machines); for mnist and"
            " fashion-mnist, a folder holding their four .gz files.",
            metavar="ARCHIVE",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start over even if the data is there.")
    ] = False,
    keep_archive: Annotated[
        bool, typer.Option("--keep-archive", help="Keep the .tar.gz afterwards.")
    ] = False,
) -> None:
    """Fetch CIFAR-10 (or --dataset cifar100, fashion-mnist, mnist), verify it, and cache it.

    Every file's md5 is checked before anything is extracted or parsed; the
    images are then converted once into a uint8 cache that loads in milliseconds.

    Interrupted downloads resume. Proxies and CA bundles come from the usual
    environment variables (HTTPS_PROXY, REQUESTS_CA_BUNDLE).

    Example: svmtool download --data-dir ./data
    """
    from svmtool.io.dataset import DOWNLOADABLE

    where = resolve_data_dir(data_dir)
    check_choice("--dataset", dataset, DOWNLOADABLE)
    options = {"url": url, "md5": md5, "from_file": from_file, "force": force,
               "keep_archive": keep_archive}  # fmt: skip
    if dataset != "cifar10":
        if format != "binary":
            raise BadValue("--format", f"applies to cifar10, not {dataset}")
        result = fetch_cifar(where, dataset=dataset, **options)
        if result.already:
            say(f"{dataset} is already in {result.cache} (use --force to fetch it again)")
        else:
            say(
                f"verified and converted: {result.train_count} training,"
                f" {result.test_count} test images ({result.cache})"
            )
        return
    result = fetch_cifar(where, fmt=format, **options)
    if result.note:
        say(result.note)
    if result.already:
        say(f"CIFAR-10 is already in {result.cache} (use --force to fetch it again)")
    else:
        say(
            f"verified and converted: {result.train_count} training,"
            f" {result.test_count} test images"
        )
        if result.archive_kept:
            say(f"archive kept at {result.archive_kept}")
    print(clean(result.cache))
