"""Training: settings, objectives, the fit loop, evaluation, and the saved artifacts."""
