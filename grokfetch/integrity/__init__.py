"""Integrity formats and checks shared by the tools: torrent metainfo (``bencode``,
``torrentfile``), torrent piece hashing of files on disk (``pieces``, ``pieces_v1``,
``pieces_v2``, ``pieces_parts``), grokfetch manifests (``manifest``: schema, streaming hasher,
writer and checker), fast hashing I/O (``hashio``) and the findings they report (``report``).

A layer below ``torrent``, ``verify``, ``convert`` and ``smoke``: convert hashes its inputs
against a saved torrent and writes its output manifest with these, and ``verify`` runs them over
a folder. It imports only the core and never libtorrent.
"""
