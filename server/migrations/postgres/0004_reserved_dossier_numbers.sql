-- Version 4 belongs to the dossier numbers (issue 16, branch `numbers`); this placeholder keeps
-- the version numbers of this branch in step until the two are merged.
SELECT 1;
