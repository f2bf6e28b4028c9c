"""Experiments and benchmarks, apart from the production path: the ablation, the fit and pipeline benches, baselines."""
