"""Segmentation pseudo-label operators (DESIGN.md §4): things from boxes (``box_labels``)."""
