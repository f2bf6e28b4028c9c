"""Engines, storage, configs, manifests and versions. The only place ray/beam are imported."""
