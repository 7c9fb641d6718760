"""Synthetic person re-identification benchmark (pure numpy + Pillow)."""
