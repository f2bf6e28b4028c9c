"""Torch models and numerical cores: body model, pose prior, initialisers, optimisers."""
