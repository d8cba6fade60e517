"""Prove a folder holds the right bytes: torrent piece hashes, grokfetch manifests, and the
tensor table's structure.

Public surface: :func:`verify.run.verify` (everything that applies to a folder),
:func:`verify.repair.verify_and_repair`, :mod:`verify.manifest` (``build_manifest``,
``write_manifest``, ``check_manifest``, ``StreamHasher``), :func:`verify.pieces.check_torrent`
and :func:`verify.pieces.check_file`, :func:`verify.structure.check_structure`, and the
:class:`~verify.report.Finding` / :class:`~verify.report.Report` they return. See docs/verify.md.
"""
