"""Celery entry points and the disk work behind them."""
