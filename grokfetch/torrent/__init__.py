"""BitTorrent side of grokfetch, on libtorrent: download, seed and create torrents.

Public surface (import the submodules; ``libtorrent`` is imported lazily inside them):

* :func:`grokfetch.torrent.job.download` with :class:`~grokfetch.torrent.job.DownloadOptions`,
  returning a :class:`~grokfetch.torrent.job.DownloadResult` once every wanted piece
  hash-verifies;
* :class:`grokfetch.torrent.seed.Seeder`, an in-process seeder (context manager, ``.port``);
* :func:`grokfetch.torrent.create.create_torrent`, a deterministic v1 torrent of a folder;
* :data:`grokfetch.torrent.source.PRESET_SOURCES`, the official Grok-1 magnet data.
"""
