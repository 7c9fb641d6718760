"""reidbench.harness: data, training loop, evaluation, scheduling, store, reports and the CLI."""
