-- Schema for examples/focus_minutes.toml: minutes of focus per pomodoro, and teams.
-- Idempotent; apply with: psql "$PROJECTOR_PG_DSN" -f examples/focus_minutes.sql
-- then: PROJECTOR_BOARDS_FILE=examples/focus_minutes.toml projector migrate

-- A summed column must never be negative (a negative value would mis-rank members);
-- the projector refuses a sum board without this CHECK.
ALTER TABLE pomodoros ADD COLUMN IF NOT EXISTS minutes integer NOT NULL DEFAULT 25;
ALTER TABLE pomodoros ADD COLUMN IF NOT EXISTS team_id text;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'pomodoros_minutes_not_negative') THEN
        ALTER TABLE pomodoros ADD CONSTRAINT pomodoros_minutes_not_negative CHECK (minutes >= 0);
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS teams (
    id   text PRIMARY KEY,
    name text NOT NULL
);

-- Every column a board reads must be in the old row of an UPDATE or DELETE: with boards
-- over user_id, team_id, completed_at and minutes, the whole old row is simplest.
ALTER TABLE pomodoros REPLICA IDENTITY FULL;
ALTER TABLE teams REPLICA IDENTITY FULL;

CREATE INDEX IF NOT EXISTS pomodoros_team_time ON pomodoros (team_id, completed_at);
