"""Backup jobs: schedules, the scheduler, the session runner, retention, notifications, health checks."""
