//! Public IPv4 addresses of active VMs.
//!
//! Only the RFC 5737 documentation ranges api-shapes.md names (203.0.113.0/24, then
//! 198.51.100.0/24) are used, so a test can never reach a real host. Neither the network (.0)
//! nor the broadcast (.255) address is handed out, which leaves 508 addresses.

const RANGES: [&str; 2] = ["203.0.113", "198.51.100"];
/// .1 to .254 of each range.
const PER_RANGE: usize = 254;
pub const POOL_SIZE: usize = RANGES.len() * PER_RANGE;

/// One address of the pool, by position: 0 is 203.0.113.1, 254 is 198.51.100.1.
pub type Slot = usize;

#[derive(Debug, Clone)]
pub struct IpPool {
    /// How many live VMs hold each address.
    holders: Vec<u32>,
    /// Where the search for the next address starts.
    cursor: Slot,
}

impl Default for IpPool {
    fn default() -> Self {
        IpPool {
            holders: vec![0; POOL_SIZE],
            cursor: 0,
        }
    }
}

impl IpPool {
    /// The address held by the fewest live VMs, searching from just after the one given last.
    /// A free address therefore always wins, and addresses rotate the way a cloud's do (one
    /// just released is not handed out again at once). Only when all 508 are held by live VMs
    /// does a second VM get an address already in use: the least shared, in the same
    /// deterministic rotation, so sharing stays as even as it can be.
    pub fn allocate(&mut self) -> Slot {
        let mut best: Option<(u32, Slot)> = None;
        for offset in 0..POOL_SIZE {
            let slot = (self.cursor + offset) % POOL_SIZE;
            let held = self.holders.get(slot).copied().unwrap_or(u32::MAX);
            if best.is_none_or(|(fewest, _)| held < fewest) {
                best = Some((held, slot));
                if held == 0 {
                    break;
                }
            }
        }
        let slot = best.map_or(self.cursor, |(_, slot)| slot);
        if let Some(held) = self.holders.get_mut(slot) {
            *held = held.saturating_add(1);
        }
        self.cursor = (slot + 1) % POOL_SIZE;
        slot
    }

    /// Gives an address back when the VM holding it stops or is terminated.
    pub fn release(&mut self, slot: Slot) {
        if let Some(held) = self.holders.get_mut(slot) {
            *held = held.saturating_sub(1);
        }
    }

    pub fn address(slot: Slot) -> String {
        let range = RANGES.get(slot / PER_RANGE).unwrap_or(&RANGES[0]);
        format!("{range}.{}", slot % PER_RANGE + 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_pool_is_the_two_documented_ranges_without_network_or_broadcast() {
        assert_eq!(IpPool::address(0), "203.0.113.1");
        assert_eq!(IpPool::address(253), "203.0.113.254");
        assert_eq!(IpPool::address(254), "198.51.100.1");
        assert_eq!(IpPool::address(POOL_SIZE - 1), "198.51.100.254");
    }

    #[test]
    fn live_addresses_are_unique_until_all_508_are_held() {
        let mut pool = IpPool::default();
        let mut live: Vec<Slot> = (0..POOL_SIZE).map(|_| pool.allocate()).collect();
        assert_eq!(live.iter().collect::<HashSet<_>>().len(), POOL_SIZE);
        // Release half and allocate again, many times over: never a duplicate.
        for round in 0..10 {
            for slot in live.drain(..POOL_SIZE / 2) {
                pool.release(slot);
            }
            for _ in 0..POOL_SIZE / 2 {
                live.push(pool.allocate());
            }
            assert_eq!(
                live.iter().collect::<HashSet<_>>().len(),
                POOL_SIZE,
                "round {round}"
            );
        }
        // Full: the next one shares, and a release makes room for a unique one again.
        let shared = pool.allocate();
        assert!(live.contains(&shared));
        let freed = live.remove(POOL_SIZE / 3);
        pool.release(freed);
        assert_eq!(pool.allocate(), freed);
    }
}
