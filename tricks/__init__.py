"""reidbench.tricks: the trick registry."""
