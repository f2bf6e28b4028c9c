"""Operators every pipeline shares: video decoding, JPEG encoding, mesh rendering."""
