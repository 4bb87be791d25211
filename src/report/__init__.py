"""What a run reports: the metric table and plots, the HTML report, the training curves."""
