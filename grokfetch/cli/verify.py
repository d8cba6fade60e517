"""Placeholder: the `verify` command is being built (replace this whole module)."""


def register(app) -> None:  # noqa: ARG001
    pass
