"""``grokfetch smoke``: the full Grok-1 MoE in JAX on N devices, checked.

* :mod:`grokfetch.smoke.model`: the forward pass as pure functions (one device's shard).
* :mod:`grokfetch.smoke.mesh`: devices, the (data, model) mesh, partition specs, preflight.
* :mod:`grokfetch.smoke.engine`: the compiled programs and greedy generation.
* :mod:`grokfetch.smoke.load`: every checkpoint format → parameters on the mesh.
* :mod:`grokfetch.smoke.tokenizer`: the SentencePiece tokenizer (no BOS).
* :mod:`grokfetch.smoke.run`: :func:`~grokfetch.smoke.run.smoke`, the checks and the report.

JAX is imported only by the modules that need it, and only once a command runs.
"""
