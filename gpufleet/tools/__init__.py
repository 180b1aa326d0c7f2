"""Tools a user runs from the CLI: ``gpufleet bench``, ``gpufleet load``, ``gpufleet demo`` and their test data.

- :mod:`gpufleet.tools.bench` — the pool against the model's own ceiling (``gpufleet bench``);
- :mod:`gpufleet.tools.bench_served` — the same model served over HTTP (``gpufleet bench --http``);
- :mod:`gpufleet.tools.load` — a closed-loop HTTP load generator (``gpufleet load``);
- :mod:`gpufleet.tools.demo` — the README's demo (``gpufleet demo``);
- :mod:`gpufleet.tools.synth` — synthetic images and videos with known answers.
"""
