"""What a run writes: files, models, plots, report.md and the end-of-stage summary."""
