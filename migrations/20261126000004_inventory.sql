-- What the inventory sync learns about each VM beyond money, what happened to it, and the
-- outbox of webhook deliveries.

ALTER TABLE vms ADD COLUMN public_ip TEXT;
ALTER TABLE vms ADD COLUMN datacenter TEXT;              -- JSON {country, city, tier}
ALTER TABLE vms ADD COLUMN open_ports TEXT;              -- JSON [{port, protocol}], as Fluence lists them
ALTER TABLE vms ADD COLUMN os_image TEXT;
-- When the provider terminated it (status Terminated seen); NULL otherwise.
ALTER TABLE vms ADD COLUMN terminated_at TEXT;
-- Since when a VM seen before is missing from Fluence's list: one missing sighting is not a
-- deletion (lists can lag), so it is marked deleted only after a while.
ALTER TABLE vms ADD COLUMN missing_since TEXT;
CREATE INDEX vms_status ON vms (status) WHERE deleted_at IS NULL;

-- Append-only: what happened to a VM, as the gateway saw it.
CREATE TABLE vm_events (
    id          INTEGER PRIMARY KEY,
    vm_id       TEXT NOT NULL,
    team_id     TEXT,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,     -- status_changed, terminated_by_provider, discovered_unowned, disappeared, ...
    from_status TEXT,
    to_status   TEXT,
    detail      TEXT               -- JSON
) STRICT;
CREATE INDEX vm_events_vm ON vm_events (vm_id, id);
CREATE TRIGGER vm_events_no_update BEFORE UPDATE ON vm_events
BEGIN SELECT RAISE(ABORT, 'vm_events is append-only'); END;
CREATE TRIGGER vm_events_no_delete BEFORE DELETE ON vm_events
BEGIN SELECT RAISE(ABORT, 'vm_events is append-only'); END;

-- A team's policy for VMs the provider terminated: when true (the default) the gateway deletes
-- them, which makes Fluence release the balance it still holds for them.
ALTER TABLE teams ADD COLUMN finalize_terminated INTEGER NOT NULL DEFAULT 1 CHECK (finalize_terminated IN (0, 1));

-- Webhook deliveries, written in the same transaction as the event they announce and sent
-- by the webhook job with retries, so an event is never lost to a failed or slow receiver.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY,
    event           TEXT NOT NULL,     -- e.g. budget.threshold_crossed
    body            TEXT NOT NULL,     -- the JSON sent, fixed at creation
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    delivered_at    TEXT,
    last_error      TEXT
) STRICT;
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL;
