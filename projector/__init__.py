"""Change-data-capture projector: PostgreSQL logical replication into Redis leaderboards."""

__version__ = "0.1.0"
