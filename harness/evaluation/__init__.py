"""harness/evaluation."""
