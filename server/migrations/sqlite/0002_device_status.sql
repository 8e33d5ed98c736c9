-- Version 2: what each device last reported, for operators: documents still waiting on the
-- tablet, and when it was last seen (any authenticated sync, pushes or not).
ALTER TABLE devices ADD COLUMN pending_docs INTEGER;
ALTER TABLE devices ADD COLUMN last_seen_at INTEGER;
