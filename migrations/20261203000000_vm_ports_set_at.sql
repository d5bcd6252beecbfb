-- When the gateway last had Fluence change a VM's open ports. A listing fetched before that
-- instant shows the ports from before the change; the sync must not write them back over it.
ALTER TABLE vms ADD COLUMN ports_set_at TEXT;
