"""cloudkeep: backup of cloud machines with agents writing straight to object storage."""

__version__ = "0.1.0"
