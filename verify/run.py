"""``verify(DIR)``: pick the checks that apply to a folder, run them, merge one :class:`Report`.

Sources, in order: ``torrent=`` or ``manifest=`` when given; else ``DIR/grokfetch-manifest.json``;
else the torrent the download saved in ``DIR/.grokfetch/`` (or in the parent's, when DIR is the
torrent's top folder). The structure check runs by default whenever DIR holds a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import NotFoundError, UsageError
from grokfetch.integrity.dlstate import STATE_DIR, download_selection, find_download
from grokfetch.integrity.manifest import MANIFEST_NAME, check_manifest
from grokfetch.integrity.pieces import check_torrent
from grokfetch.integrity.report import Report
from grokfetch.integrity.torrentfile import Torrent, content_root, load_torrent
from grokfetch.progress import NULL_PROGRESS, Progress
from grokfetch.verify.structure import check_structure


@dataclass
class Plan:
    """What one verify run will check, and where."""

    root: Path                      # the content folder that paths are relative to
    torrent_path: Path | None = None
    torrent: Torrent | None = None
    manifest_path: Path | None = None
    structure: bool = False
    only: set[int] | None = None    # torrent file indices the download selected (None = all)
    note: str = ""                  # how the selection was found


def plan(path: Path, *, torrent: Path | None = None, manifest: Path | None = None,
         structure: bool | None = None, all_files: bool = False) -> Plan:
    """Decide the checks for ``path`` (see the module docstring).

    Raises:
        NotFoundError: ``path`` is not a folder.
        UsageError: both sources given, an unreadable source, or nothing to check.
    """
    path = Path(path).absolute()   # "." has no name, and its parent is "." again
    if not path.is_dir():
        raise NotFoundError(path, "folder to verify")
    if torrent is not None and manifest is not None:
        raise UsageError("give --torrent or --manifest, not both")
    p = Plan(root=path)
    if torrent is not None:
        p.torrent_path, p.torrent = Path(torrent), load_torrent(Path(torrent))
        p.only = None if all_files else download_selection(path, p.torrent)
    elif manifest is not None:
        p.manifest_path = Path(manifest)
    elif (path / MANIFEST_NAME).is_file():
        p.manifest_path = path / MANIFEST_NAME
    elif (saved := find_download(path)) is not None:
        p.torrent_path, p.torrent = saved.torrent_path, saved.torrent
        p.only = None if all_files else saved.selected
    if p.torrent is not None:
        p.root = content_root(path, p.torrent)
        if p.only is not None:
            p.note = (f"{len(p.only)} of {len(p.torrent.data_files())} files, as selected "
                      "by the download (--all-files checks every file)")
    if structure is None:
        from grokfetch.checkpoint.reader import find_layout

        try:
            layout = find_layout(p.root)
            # only a checkpoint inside the checked folder (not a sibling found one level up)
            p.structure = layout.root.resolve().is_relative_to(p.root.resolve())
        except NotFoundError:
            p.structure = False
    else:
        p.structure = structure
    if p.torrent is None and p.manifest_path is None and not p.structure:
        raise UsageError(f"nothing to verify in {path}: no checkpoint, no {MANIFEST_NAME}, "
                         f"no saved torrent in {STATE_DIR}/",
                         hint="give --torrent FILE or --manifest FILE")
    return p


def _check_preset(p: Plan, preset: str | None) -> None:
    """A checkpoint without ``model-config.json`` is checked against a preset; when the torrent's
    own tensor sizes disagree with that preset, the preset is wrong, not every file."""
    import os

    from grokfetch.checkpoint.reader import open_checkpoint
    from grokfetch.spec import CONFIG_FILENAME

    ck = open_checkpoint(p.root, preset)
    if any((d / CONFIG_FILENAME).is_file() for d in (ck.layout.root, ck.layout.root.parent)):
        return
    sizes = {f.path: f.size for f in p.torrent.data_files()} if p.torrent else {}
    tensors = {k for k in sizes if k.rsplit("/", 1)[-1].startswith("tensor")}
    wrong = 0
    for spec in ck.table:
        rel = Path(os.path.relpath(ck.file_path(spec), p.root)).as_posix()
        if sizes.get(rel, spec.file_bytes) != spec.file_bytes:
            wrong += 1
    if wrong or (tensors and len(tensors) != len(ck.table)):
        raise UsageError(f"the torrent's tensor files do not match preset {ck.config.name!r} "
                         f"({len(tensors)} files, {wrong} of other sizes)",
                         hint="pass the matching --preset (grok-1, mini, tiny), or --no-structure")


def verify(path: Path, *, torrent: Path | None = None, manifest: Path | None = None,
           structure: bool | None = None, preset: str | None = None, jobs: int | None = None,
           scheme: str = "auto", all_files: bool = False,
           progress: Progress = NULL_PROGRESS) -> Report:
    """Run every check that applies to ``path``; returns the merged report (never raises for
    bad data: that is what the report is for).

    Args:
        path: the download folder or the torrent's top folder (or any folder with a manifest).
        torrent: a ``.torrent`` to check against (default: the one the download saved).
        manifest: a grokfetch manifest to check against (default: ``DIR/grokfetch-manifest.json``).
        structure: check tensor files against the table (None = when there is a checkpoint).
        preset: the config when the checkpoint has no ``model-config.json``.
        jobs: parallel hashing jobs (default: one per core, at most 8).
        scheme: torrent hashes to use for a hybrid torrent: ``auto`` (v2), ``v1`` or ``v2``.
        all_files: check every file of the torrent even when the download selected fewer.
    """
    t0 = time.monotonic()
    p = plan(path, torrent=torrent, manifest=manifest, structure=structure, all_files=all_files)
    report = Report(root=p.root)
    selected = None
    if p.only is not None and p.torrent is not None:
        selected = {p.torrent.files[i].path for i in p.only}
    if p.structure and p.torrent is not None:
        _check_preset(p, preset)
    if p.structure:
        report.merge(check_structure(p.root, preset=preset, rel_to=p.root, only=selected,
                                     progress=progress))
    if p.torrent is not None:
        report.merge(check_torrent(p.root, p.torrent, scheme=scheme, jobs=jobs, only=p.only,
                                   strict=True, progress=progress))
        report.sources["torrent"] = str(p.torrent_path)
        if p.note:
            report.sources["selection"] = p.note
    elif p.manifest_path is not None:
        report.merge(check_manifest(p.root, p.manifest_path, jobs=jobs, progress=progress))
    report.seconds = time.monotonic() - t0
    return report
