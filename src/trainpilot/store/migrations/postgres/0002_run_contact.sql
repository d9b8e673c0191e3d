-- When a server last heard from each run (a batch or a heartbeat): replicas share it, so one that
-- never receives a run's batches does not mark it lost while another one does.
CREATE TABLE run_contact(run_id TEXT PRIMARY KEY REFERENCES runs(id), heard_at DOUBLE PRECISION NOT NULL);
