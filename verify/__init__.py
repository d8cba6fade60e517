"""The ``verify`` command's logic: which checks apply to a folder, run them, one report.

:func:`grokfetch.verify.run.verify` finds what a folder offers (saved torrents, a grokfetch
manifest, a checkpoint) and runs the matching checks from :mod:`grokfetch.integrity` (piece
hashes, manifests) and :func:`grokfetch.verify.structure.check_structure` (the tensor table),
merging their findings into one :class:`~grokfetch.integrity.report.Report`. Re-fetching bad
pieces lives a layer up, in :mod:`grokfetch.repair`, since it needs the torrent client.
See docs/verify.md.
"""
