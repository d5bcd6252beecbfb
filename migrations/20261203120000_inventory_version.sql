-- A number that moves whenever any row of `vms` is written, by whichever process or code path:
-- an answer read from `vms` at version N may be served again for as long as the version is
-- still N. Kept by triggers so that no writer can forget it.
CREATE TABLE inventory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO inventory_version (id, version) VALUES (1, 0);

CREATE TRIGGER inventory_version_on_insert AFTER INSERT ON vms
BEGIN UPDATE inventory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER inventory_version_on_update AFTER UPDATE ON vms
BEGIN UPDATE inventory_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER inventory_version_on_delete AFTER DELETE ON vms
BEGIN UPDATE inventory_version SET version = version + 1 WHERE id = 1; END;
