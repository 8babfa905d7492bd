"""Read API: leaderboards over HTTP from Redis with a PostgreSQL fallback."""
