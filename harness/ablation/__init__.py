"""harness/ablation."""
