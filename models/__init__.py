"""reidbench.models: backbones (timm), heads (plain, BNNeck), losses (triplet, center)."""
