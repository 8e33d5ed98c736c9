-- Version 11 (sqlite): every published working calendar, kept so that a tablet still holding an
-- older one can return a dossier with the verdict it computed (ADR 0009).

-- One row per publication that changed the calendar: its catalogue version and the overrides
-- (JSON list of CalendarOverride). Rows are never changed nor removed.
CREATE TABLE calendar_versions (
    version  INTEGER PRIMARY KEY,
    calendar TEXT NOT NULL
);
-- The calendar in effect now: calendars published before this version were not kept.
INSERT INTO calendar_versions (version, calendar)
    SELECT calendar_version, calendar FROM catalogue WHERE id = 1 AND calendar_version > 0;
