-- Facts about this database itself, written once at first start.
-- `upstream_mode` binds the database to the kind of upstream it was created with, so an
-- inventory built against the simulator can never be mistaken for a real Fluence account.
CREATE TABLE gateway_meta (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
