"""grokfetch: get Grok-1 from a BitTorrent swarm to a working model on your own hardware."""

__version__ = "0.1.0"
