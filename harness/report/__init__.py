"""Reports: tables, LaTeX, plots and ranked lists, rendered from the store alone."""
