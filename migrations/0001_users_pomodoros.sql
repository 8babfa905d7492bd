-- Users and their completed pomodoros: the source of truth the projector reads.
CREATE TABLE IF NOT EXISTS users (
    id           text PRIMARY KEY,
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pomodoros (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      text NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now()
);

-- Serves "count of a user's pomodoros in a time range" as an index-only scan, and is
-- the replica identity: UPDATE and DELETE then carry the old user_id and completed_at
-- in the WAL (and only when they change), without the cost of REPLICA IDENTITY FULL.
CREATE UNIQUE INDEX IF NOT EXISTS pomodoros_user_time_id
    ON pomodoros (user_id, completed_at, id);
ALTER TABLE pomodoros REPLICA IDENTITY USING INDEX pomodoros_user_time_id;

-- Serves "every user's count in a time range" (leaderboard fallback, rebuild) index-only.
CREATE INDEX IF NOT EXISTS pomodoros_time_user
    ON pomodoros (completed_at) INCLUDE (user_id);
