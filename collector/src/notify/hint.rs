//! First steps: one line per failure reason telling a responder where to
//! look first. Messages (every channel) and the dashboard's incident page
//! show the hint of each reason they name.
//!
//! The table is an exhaustive `match` on the proto's `Reason`, so a reason
//! added to the contract does not build until it has a hint here; the test
//! below walks every reason the proto knows as well.

use portwatch_proto::v1 as pb;

/// The first step for a failure `reason` as messages and the API name it
/// (`refused`, `dns_nxdomain`, an agent incident's `disconnected`...), or
/// None for a success or a name this collector does not know.
pub fn hint(reason: &str) -> Option<&'static str> {
    use pb::Reason as R;
    // An agent offline incident's reasons are not probe results.
    let r = match reason {
        "disconnected" => {
            return Some(
                "is the agent running, and can it reach the collector's agent port (its log says why not)?",
            );
        }
        "revoked" => {
            return Some("an operator revoked the agent: enroll it again if that was a mistake");
        }
        name => R::from_str_name(&format!("REASON_{}", name.to_ascii_uppercase()))?,
    };
    Some(match r {
        R::Unspecified | R::Ok => return None,
        R::Refused => "is the process running and bound to this address and port?",
        R::Timeout => "a firewall or routing between this location and the host drops packets",
        R::Reset => "the service or a middlebox is refusing sessions",
        R::NetUnreachable => "no route from this location to the host's network",
        R::HostUnreachable => {
            "no route from this location to the host, or a firewall rejects it (ICMP)"
        }
        R::DnsNxdomain => "check the resolver and the record: the name does not resolve",
        R::DnsServfail => {
            "check the resolver and the record: the resolver failed (SERVFAIL/REFUSED)"
        }
        R::DnsTimeout => "check the resolver and the record: no resolver answered in time",
        R::Slow => "the service answers, slowly: check the host's load and the path",
        R::TlsError => "check the certificate (expiry, name, chain) and the TLS versions offered",
        R::CertExpiring => {
            "check the certificate (expiry, name, chain): renew it before it expires"
        }
        R::CertExpired => "check the certificate (expiry, name, chain): it has expired, renew it",
        R::UnexpectedReply => {
            "the protocol answer was not what the preset expects: is it the right service, healthy?"
        }
        R::NoReply => "nothing answered the request: is the service running, or is it dropped?",
        R::Exposed => "the port should be closed: check the host's firewall and what listens there",
        R::BlockedAddress => {
            "a public location may not reach a private address: watch it from an agent"
        }
        R::Internal => "the location could not run the check itself: see the agent's log",
    })
}

/// `(reason, hint)` for each of `reasons` that has a hint, once each, in
/// order: the "first steps" of a message or the incident page.
pub fn first_steps<'a>(reasons: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, &'static str)> {
    let mut out: Vec<(&str, &'static str)> = Vec::new();
    for r in reasons {
        if let Some(h) = hint(r)
            && !out.iter().any(|(seen, _)| *seen == r)
        {
            out.push((r, h));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure reason the proto knows, by the name messages use.
    fn failure_reasons() -> Vec<String> {
        (0..=i32::from(u8::MAX))
            .filter(|&i| {
                pb::Reason::try_from(i)
                    .is_ok_and(|r| !matches!(r, pb::Reason::Unspecified | pb::Reason::Ok))
            })
            .map(crate::incident::reason_name)
            .collect()
    }

    #[test]
    fn every_failure_reason_has_a_one_line_hint() {
        let reasons = failure_reasons();
        assert!(reasons.len() >= 17, "{reasons:?}");
        for r in reasons
            .iter()
            .map(String::as_str)
            .chain(["disconnected", "revoked"])
        {
            let h = hint(r).unwrap_or_else(|| panic!("reason {r:?} has no hint"));
            assert!(
                !h.is_empty() && !h.contains('\n') && h.len() <= 100,
                "{r}: {h:?} is not one short line"
            );
        }
    }

    #[test]
    fn hints_say_where_to_look_and_success_has_none() {
        assert_eq!(
            hint("refused"),
            Some("is the process running and bound to this address and port?")
        );
        assert!(hint("timeout").unwrap().contains("firewall or routing"));
        assert!(hint("reset").unwrap().contains("middlebox"));
        for tls in ["tls_error", "cert_expiring", "cert_expired"] {
            assert!(
                hint(tls)
                    .unwrap()
                    .starts_with("check the certificate (expiry, name, chain)")
            );
        }
        for dns in ["dns_nxdomain", "dns_servfail", "dns_timeout"] {
            assert!(
                hint(dns)
                    .unwrap()
                    .starts_with("check the resolver and the record")
            );
        }
        assert!(hint("blocked_address").unwrap().contains("agent"));
        for none in ["ok", "unspecified", "reason_99", "-", ""] {
            assert_eq!(hint(none), None, "{none}");
        }
    }
}
