"""Test and benchmark drivers for studies (like ``optuna.testing``): the fault soak."""
