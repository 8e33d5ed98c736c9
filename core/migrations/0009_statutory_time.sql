-- Statutory time (issue 15): the effective due date (pauses, extensions and the current calendar
-- counted; NULL while the clock is stopped for a supplement) and the verdict recorded at return
-- (1 on time, 0 late, NULL not returned). Rows written before are filled from the intake due date;
-- the store recomputes open dossiers when the calendar changes.
ALTER TABLE applications ADD COLUMN effective_due TEXT;
ALTER TABLE applications ADD COLUMN returned_on_time INTEGER;
UPDATE applications SET effective_due = due_at;
CREATE INDEX applications_open_by_effective_due ON applications(effective_due)
    WHERE status IN ('received', 'in_progress', 'supplement_requested');
CREATE INDEX applications_by_verdict ON applications(returned_on_time, received_at)
    WHERE returned_on_time IS NOT NULL;
