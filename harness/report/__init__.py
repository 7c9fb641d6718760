"""Reports: tables, LaTeX, plots and ranked lists, rendered from the store alone.

Modules (import them directly; nothing heavy is imported here):

- ``tables``: ``load_ablation``/``ablation_frame`` (store → tidy frame), ``ablation_table`` and
  ``summarize`` (tidy → numeric (group, metric, stat) table), ``display_cells``, ``ablation_caption``.
- ``writers``: ``render(table, "latex"|"markdown"|"csv"|"html", caption=..., label=...)``.
- ``paper``: the paper's Table 1 and Table 3 numbers and ``paper_value``.
- ``agreement``: published against measured effects (``report --paper``): verdicts, sign agreement, Spearman's ρ.
- ``naming``: dataset, group (``Market→Duke``) and metric names.
- ``points``: run selection and ``points_from_runs`` for batch-size/image-size sweeps, ``sweep_table``.
- ``plots``, ``ranks``, ``figures``: matplotlib figures (Agg), ranked-list images.
- ``factorial``: a factorial/fractional ablation's effects and Shapley tables (``load_design``,
  ``analyse``, ``render_design``); ``design_plots``: its effects and interaction figures.
"""
