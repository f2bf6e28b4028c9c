"""Engine-free transforms on columnar batches. Never import ray or apache_beam here."""
