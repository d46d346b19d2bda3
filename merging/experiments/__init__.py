"""Many configurations at once: grid sweeps, Optuna searches, their Ray evaluators and reports."""
