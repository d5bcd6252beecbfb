//! The port set a VM update sends upstream (RELIABILITY H1). Fluence's `openPorts` replaces the
//! whole set, so leaving 22/tcp out of a request would lock its owner out of SSH: the gateway
//! computes the full set itself and keeps 22/tcp unless the request consents to closing it.

use std::collections::BTreeSet;

use super::deploy_input::{FORBIDDEN_PORT, MAX_OPEN_PORTS, PortProtocol};

pub const SSH: (u16, PortProtocol) = (22, PortProtocol::Tcp);

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChange {
    /// `open_ports`: exactly these (plus 22/tcp unless closing it is allowed).
    Replace(Vec<(u16, PortProtocol)>),
    /// `add_ports` / `remove_ports`: an edit of the current set.
    Edit {
        add: Vec<(u16, PortProtocol)>,
        remove: Vec<(u16, PortProtocol)>,
    },
}

/// The full set to send: sorted, without duplicates, never 10250, and with 22/tcp unless
/// `allow_closing_ssh`. Removing 22/tcp explicitly without that consent is refused rather than
/// silently ignored, so the caller learns why it stays open.
pub fn next_ports(
    current: &[(u16, PortProtocol)],
    change: &PortChange,
    allow_closing_ssh: bool,
) -> Result<Vec<(u16, PortProtocol)>, String> {
    let mut set: BTreeSet<(u16, PortProtocol)> = match change {
        PortChange::Replace(ports) => ports.iter().copied().collect(),
        PortChange::Edit { add, remove } => {
            if !allow_closing_ssh && remove.contains(&SSH) {
                return Err(
                    "removing 22/tcp closes SSH; send allow_closing_ssh: true to mean it".into(),
                );
            }
            let mut set: BTreeSet<_> = current.iter().copied().collect();
            for port in remove {
                set.remove(port);
            }
            set.extend(add.iter().copied());
            set
        }
    };
    if set.iter().any(|(port, _)| *port == FORBIDDEN_PORT) {
        return Err(format!(
            "port {FORBIDDEN_PORT} (the kubelet) may not be opened"
        ));
    }
    if !allow_closing_ssh {
        set.insert(SSH);
    }
    if set.len() > MAX_OPEN_PORTS {
        return Err(format!("at most {MAX_OPEN_PORTS} ports may be open"));
    }
    Ok(set.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HTTP: (u16, PortProtocol) = (80, PortProtocol::Tcp);
    const DNS: (u16, PortProtocol) = (53, PortProtocol::Udp);

    #[test]
    fn a_full_list_without_22_keeps_22() {
        assert_eq!(
            next_ports(
                &[SSH],
                &PortChange::Replace(vec![HTTP, (443, PortProtocol::Tcp)]),
                false
            ),
            Ok(vec![SSH, HTTP, (443, PortProtocol::Tcp)])
        );
        assert_eq!(
            next_ports(&[SSH], &PortChange::Replace(vec![HTTP]), true),
            Ok(vec![HTTP])
        );
    }

    #[test]
    fn edits_apply_to_the_current_set() {
        let edit = PortChange::Edit {
            add: vec![DNS],
            remove: vec![HTTP],
        };
        assert_eq!(next_ports(&[SSH, HTTP], &edit, false), Ok(vec![SSH, DNS]));
        let close = PortChange::Edit {
            add: vec![],
            remove: vec![SSH],
        };
        assert!(next_ports(&[SSH, HTTP], &close, false).is_err());
        assert_eq!(next_ports(&[SSH, HTTP], &close, true), Ok(vec![HTTP]));
    }

    #[test]
    fn the_kubelet_port_is_refused_however_it_is_asked_for() {
        let kubelet = (FORBIDDEN_PORT, PortProtocol::Tcp);
        assert!(next_ports(&[SSH], &PortChange::Replace(vec![kubelet]), false).is_err());
        let edit = PortChange::Edit {
            add: vec![kubelet],
            remove: vec![],
        };
        assert!(next_ports(&[SSH], &edit, true).is_err());
    }

    fn port() -> impl Strategy<Value = (u16, PortProtocol)> {
        (
            prop_oneof![
                Just(22u16),
                Just(80),
                Just(443),
                Just(FORBIDDEN_PORT),
                1u16..=65535
            ],
            prop_oneof![
                Just(PortProtocol::Tcp),
                Just(PortProtocol::Udp),
                Just(PortProtocol::Sctp)
            ],
        )
    }

    fn change() -> impl Strategy<Value = PortChange> {
        prop_oneof![
            proptest::collection::vec(port(), 0..8).prop_map(PortChange::Replace),
            (
                proptest::collection::vec(port(), 0..6),
                proptest::collection::vec(port(), 0..6)
            )
                .prop_map(|(add, remove)| PortChange::Edit { add, remove }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// H1: whatever the update, the set sent never lacks 22/tcp without explicit consent
        /// and never holds 10250.
        #[test]
        fn no_update_locks_ssh_out_without_consent(
            current in proptest::collection::vec(port(), 0..8),
            change in change(),
            consent in any::<bool>(),
        ) {
            let current: Vec<_> = current.into_iter().filter(|(p, _)| *p != FORBIDDEN_PORT).collect();
            if let Ok(next) = next_ports(&current, &change, consent) {
                prop_assert!(consent || next.contains(&SSH));
                prop_assert!(next.iter().all(|(p, _)| *p != FORBIDDEN_PORT));
                prop_assert!(next.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
