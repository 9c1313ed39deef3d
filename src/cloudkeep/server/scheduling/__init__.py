"""Scheduling: when backup jobs, health checks and protection-group rescans run.

``schedule`` parses and computes schedules (daily / monthly / periodic / after_job, windows),
``scheduler`` starts what is due exactly once across workers (``tick``, ``start_scheduler``) and
reacts to ended backup sessions (retries, chained jobs), ``rescans`` says which groups are due.
This package is kept free of imports so ``jobs`` may use ``schedule`` without a cycle.
"""
