"""Prove a folder holds the right bytes: torrent piece hashes, grokfetch manifests, and the
tensor table's structure.

Public surface: :func:`grokfetch.verify.run.verify` (everything that applies to a folder),
:func:`grokfetch.verify.repair.verify_and_repair`, :mod:`grokfetch.verify.manifest` (``build_manifest``,
``write_manifest``, ``check_manifest``, ``StreamHasher``), :func:`grokfetch.verify.pieces.check_torrent`
and :func:`grokfetch.verify.pieces.check_file`, :func:`grokfetch.verify.structure.check_structure`, and the
:class:`~grokfetch.verify.report.Finding` / :class:`~grokfetch.verify.report.Report` they return. See docs/verify.md.
"""
