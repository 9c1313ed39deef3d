"""State store: SQLAlchemy models (the domain model) and sessions."""
