-- The first schema: the same tables as the SQLite store, plus the id counter whose row lock orders commits.
CREATE TABLE runs(
    id TEXT PRIMARY KEY, project TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    config JSON NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    last_step BIGINT, last_event_id BIGINT);
CREATE INDEX runs_updated ON runs(updated_at DESC, id);

-- One row: the last event id handed out. Every append locks it first (SELECT ... FOR UPDATE) and
-- holds it to commit, so a smaller id is always visible before a larger one is even assigned.
CREATE TABLE event_ids(
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), last_id BIGINT NOT NULL);
INSERT INTO event_ids(last_id) VALUES (0);

CREATE TABLE events(
    id BIGINT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), seq BIGINT, kind TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, step BIGINT, data JSON NOT NULL);
CREATE UNIQUE INDEX events_run_seq ON events(run_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX events_run_id ON events(run_id, id);

CREATE TABLE metric_keys(
    id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), name TEXT NOT NULL,
    UNIQUE(run_id, name));

CREATE TABLE points(
    key_id BIGINT NOT NULL, step BIGINT NOT NULL, event_id BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL, ts DOUBLE PRECISION NOT NULL, PRIMARY KEY(key_id, step, event_id));

CREATE TABLE latest(
    key_id BIGINT PRIMARY KEY, step BIGINT NOT NULL, event_id BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL, ts DOUBLE PRECISION NOT NULL);
