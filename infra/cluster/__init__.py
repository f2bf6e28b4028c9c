"""Cluster launch files (``ray up``, KubeRay) and the renderer of scheduled regenerations (``schedule.py``)."""
