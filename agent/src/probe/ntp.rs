//! The NTP preset of the UDP prober: a 48-byte client (mode 3) request carrying
//! our transmit timestamp, and the reading of the server's reply (RFC 5905).
//! Pure functions of bytes and timestamps, so the parsing, the kiss-o'-death and
//! unsynchronized cases and the offset arithmetic are unit-tested with fixtures.
//!
//! A reply is ours only when its origin timestamp echoes our transmit timestamp
//! exactly; anything else is ignored, which is also NTP's own defence against
//! stale or spoofed packets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::result::escape_excerpt;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Length of an NTP packet without extension fields.
pub const PACKET_LEN: usize = 48;

/// An NTP timestamp: seconds since 1900 in the high 32 bits (within the current
/// era), fraction of a second in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// The NTP timestamp of a system time. Era wrapping (2036) is handled by
    /// working modulo 2^32 seconds, as NTP itself does.
    pub fn from_system(t: SystemTime) -> NtpTime {
        let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = (since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET)) & 0xffff_ffff;
        let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// Replaces the lowest 8 bits of the fraction (about 60 ns, well below what
    /// the system clock resolves) with `salt`, so the origin timestamp a reply
    /// must echo cannot be guessed from the time alone.
    pub fn salted(self, salt: u8) -> NtpTime {
        NtpTime((self.0 & !0xff) | u64::from(salt))
    }

    /// `self - earlier` in nanoseconds. Timestamps less than 68 years apart
    /// compare correctly across an era boundary.
    pub fn nanos_since(self, earlier: NtpTime) -> i64 {
        let fixed = self.0.wrapping_sub(earlier.0) as i64;
        ((i128::from(fixed) * 1_000_000_000) >> 32) as i64
    }

    fn read(bytes: &[u8], at: usize) -> NtpTime {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        NtpTime(u64::from_be_bytes(b))
    }
}

/// A client request: leap indicator 0, version 4, mode 3, everything else zero
/// except our transmit timestamp, which the server copies into its origin field.
pub fn build_request(transmit: NtpTime) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 0x23;
    p[40..48].copy_from_slice(&transmit.0.to_be_bytes());
    p
}

/// A usable answer from a synchronized server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpSample {
    pub stratum: u8,
    /// Server clock minus ours: ((T2-T1)+(T3-T4))/2.
    pub offset_ns: i64,
    /// Round trip minus the server's processing: (T4-T1)-(T3-T2).
    pub delay_ns: i64,
}

/// What one datagram on the NTP check's socket means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtpReply {
    /// Not the answer to our request (origin timestamp differs): keep waiting.
    NotOurs,
    Sample(NtpSample),
    /// Not an NTP server reply at all (too short, wrong mode).
    NotNtp(String),
    /// An NTP answer, but not one to trust: kiss-o'-death, unsynchronized.
    Rejected(String),
}

/// Reads one reply to the request sent at `t1` (our transmit timestamp), received at `t4`.
pub fn judge_reply(reply: &[u8], t1: NtpTime, t4: NtpTime) -> NtpReply {
    if reply.len() < PACKET_LEN {
        return NtpReply::NotNtp(format!("a {}-byte reply is too short for ntp", reply.len()));
    }
    let leap = reply[0] >> 6;
    let mode = reply[0] & 0x07;
    // 4 answers a client; 5 (broadcast) carries the same fields and some servers use it.
    if mode != 4 && mode != 5 {
        return NtpReply::NotNtp(format!("ntp mode {mode} is not a server reply"));
    }
    let origin = NtpTime::read(reply, 24);
    if origin != t1 {
        return NtpReply::NotOurs;
    }
    let stratum = reply[1];
    if stratum == 0 {
        // Kiss-o'-death: the reference ID holds an ASCII code (RATE, DENY, RSTR...).
        return NtpReply::Rejected(format!(
            "kiss-o'-death {}",
            escape_excerpt(&reply[12..16], 4)
        ));
    }
    if leap == 3 || stratum >= 16 {
        return NtpReply::Rejected("server unsynchronized".into());
    }
    let t2 = NtpTime::read(reply, 32);
    let t3 = NtpTime::read(reply, 40);
    if t3.0 == 0 {
        return NtpReply::Rejected("the reply has no transmit timestamp".into());
    }
    let offset_ns = (t2.nanos_since(t1) / 2).saturating_add(t3.nanos_since(t4) / 2);
    let delay_ns = t4.nanos_since(t1).saturating_sub(t3.nanos_since(t2));
    NtpReply::Sample(NtpSample {
        stratum,
        offset_ns,
        delay_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1 << 32;

    /// A server reply with the given first byte, stratum and timestamps.
    fn reply(b0: u8, stratum: u8, origin: NtpTime, t2: NtpTime, t3: NtpTime) -> Vec<u8> {
        let mut p = vec![0u8; PACKET_LEN];
        p[0] = b0;
        p[1] = stratum;
        p[12..16].copy_from_slice(b"LOCL");
        p[24..32].copy_from_slice(&origin.0.to_be_bytes());
        p[32..40].copy_from_slice(&t2.0.to_be_bytes());
        p[40..48].copy_from_slice(&t3.0.to_be_bytes());
        p
    }

    #[test]
    fn system_time_converts_to_the_ntp_epoch() {
        // 2026-01-01T00:00:00.5Z
        let t = UNIX_EPOCH + Duration::from_millis(1_767_225_600_500);
        let n = NtpTime::from_system(t);
        assert_eq!(n.0 >> 32, 1_767_225_600 + NTP_UNIX_OFFSET);
        assert_eq!(n.0 & 0xffff_ffff, 1 << 31);
        // Past the 2036 era rollover the seconds wrap, and differences still work.
        let before = NtpTime::from_system(UNIX_EPOCH + Duration::from_secs(2_085_978_495));
        let after = NtpTime::from_system(UNIX_EPOCH + Duration::from_secs(2_085_978_497));
        assert!(after.0 < before.0, "the era wrapped");
        assert_eq!(after.nanos_since(before), 2_000_000_000);
        assert_eq!(before.nanos_since(after), -2_000_000_000);
    }

    #[test]
    fn request_is_mode_3_version_4_with_our_timestamp() {
        let t1 = NtpTime(0x1122_3344_5566_7788);
        let p = build_request(t1);
        assert_eq!(p.len(), 48);
        assert_eq!(p[0] & 0x07, 3);
        assert_eq!((p[0] >> 3) & 0x07, 4);
        assert_eq!(&p[40..48], &t1.0.to_be_bytes());
        assert!(p[1..40].iter().all(|&b| b == 0));
        assert_eq!(NtpTime(0x1234).salted(0xab).0, 0x12ab);
    }

    #[test]
    fn offset_and_delay_follow_rfc_5905() {
        // Server 1 s ahead; 20 ms each way; 1 ms of processing.
        let t1 = NtpTime(1000 * SEC);
        let t2 = NtpTime(1001 * SEC + SEC / 50);
        let t3 = NtpTime(t2.0 + SEC / 1000);
        let t4 = NtpTime(1000 * SEC + SEC / 50 * 2 + SEC / 1000);
        let NtpReply::Sample(s) = judge_reply(&reply(0x24, 2, t1, t2, t3), t1, t4) else {
            panic!()
        };
        assert_eq!(s.stratum, 2);
        assert!((s.offset_ns - 1_000_000_000).abs() < 10, "{}", s.offset_ns);
        assert!((s.delay_ns - 40_000_000).abs() < 10, "{}", s.delay_ns);
        // Server behind: the offset is negative.
        let t2 = NtpTime(995 * SEC);
        let t3 = NtpTime(995 * SEC);
        let t4 = NtpTime(1000 * SEC);
        let NtpReply::Sample(s) = judge_reply(&reply(0x24, 3, t1, t2, t3), t1, t4) else {
            panic!()
        };
        assert!((s.offset_ns + 5_000_000_000).abs() < 10, "{}", s.offset_ns);
    }

    #[test]
    fn replies_to_other_requests_are_not_ours() {
        let t1 = NtpTime(1000 * SEC);
        let r = reply(0x24, 2, NtpTime(999 * SEC), t1, t1);
        assert_eq!(judge_reply(&r, t1, t1), NtpReply::NotOurs);
    }

    #[test]
    fn kiss_of_death_and_unsynchronized_servers_are_rejected() {
        let t1 = NtpTime(1000 * SEC);
        let mut kod = reply(0x24, 0, t1, t1, t1);
        kod[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            judge_reply(&kod, t1, t1),
            NtpReply::Rejected("kiss-o'-death RATE".into())
        );
        let alarm = reply(0xe4, 2, t1, t1, t1);
        assert_eq!(
            judge_reply(&alarm, t1, t1),
            NtpReply::Rejected("server unsynchronized".into())
        );
        let s16 = reply(0x24, 16, t1, t1, t1);
        assert_eq!(
            judge_reply(&s16, t1, t1),
            NtpReply::Rejected("server unsynchronized".into())
        );
        // Broadcast mode carries the same fields.
        assert!(matches!(
            judge_reply(&reply(0x25, 1, t1, t1, t1), t1, t1),
            NtpReply::Sample(_)
        ));
    }

    #[test]
    fn non_ntp_replies_are_rejected_never_a_panic() {
        let t1 = NtpTime(1000 * SEC);
        // Our own request echoed back (mode 3).
        assert!(
            matches!(judge_reply(&build_request(t1), t1, t1), NtpReply::NotNtp(m) if m.contains("mode 3"))
        );
        for n in 0..PACKET_LEN {
            assert!(matches!(
                judge_reply(&vec![0x24; n], t1, t1),
                NtpReply::NotNtp(_)
            ));
        }
        let mut kod = reply(0x24, 0, t1, t1, t1);
        kod[12..16].copy_from_slice(&[0xff, 0, b'\n', b'A']);
        assert_eq!(
            judge_reply(&kod, t1, t1),
            NtpReply::Rejected("kiss-o'-death \\xff\\x00\\nA".into())
        );
        assert!(matches!(
            judge_reply(&reply(0x24, 2, t1, t1, NtpTime(0)), t1, t1),
            NtpReply::Rejected(_)
        ));
    }
}
