//! The hot standby pair's wire contract: the UDP ports its members talk on (natd's
//! defaults, which natctl's security group admits from the pair itself) and the
//! heartbeat format.

/// UDP port of the heartbeats between the pair.
pub const HEARTBEAT_PORT: u16 = 4790;
/// UDP port of conntrackd's state sync (the standby's copy of the holder's connections).
pub const SYNC_PORT: u16 = 3780;
/// UDP port of the VXLAN link the standby checks the holder's forwarding through.
pub const OVERLAY_PORT: u16 = 4789;

/// The pair's UDP ports, with what each is for: what the pair's security group admits
/// from its own members, and what doctor names when they are blocked.
pub const PORTS: [(u16, &str); 3] = [
    (HEARTBEAT_PORT, "natd pair heartbeats"),
    (SYNC_PORT, "natd pair state sync (conntrackd)"),
    (OVERLAY_PORT, "natd pair forwarding check (VXLAN)"),
];

/// The ports in words, e.g. for a fix: `UDP 4790 heartbeats, 3780 state sync, 4789
/// forwarding check`.
pub fn ports_in_words() -> String {
    format!(
        "UDP {HEARTBEAT_PORT} heartbeats, {SYNC_PORT} state sync, {OVERLAY_PORT} forwarding check"
    )
}

/// Heartbeat wire format: `natd-pair 1 <instance-id> <seq> <holder 0|1|2> <forwards 0|1>
/// <held>` (holder 2: holding, and handing over; held: a number or `-`). Fields after
/// these may come: a reader ignores what it does not know.
const BEAT_MAGIC: &str = "natd-pair";

/// What one heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    /// The sender.
    pub instance: String,
    /// It holds the address.
    pub holder: bool,
    /// It holds and hands over.
    pub handing_over: bool,
    /// Its data plane forwards.
    pub forwards: bool,
    /// Connections its conntrackd tracks (the internal cache: what a holder syncs to
    /// the standby), when known. A field after those of the first format: a natd that
    /// does not know it ignores it, and one that does reads `None` from an older one.
    pub held: Option<u64>,
}

/// One heartbeat.
pub fn beat(
    instance: &str,
    seq: u64,
    holder: bool,
    handing_over: bool,
    forwards: bool,
    held: Option<u64>,
) -> String {
    format!(
        "{BEAT_MAGIC} 1 {instance} {seq} {} {} {}",
        match (holder, handing_over) {
            (true, true) => 2,
            (true, false) => 1,
            _ => 0,
        },
        u8::from(forwards),
        held.map_or_else(|| "-".to_string(), |n| n.to_string())
    )
}

/// Parses a heartbeat.
pub fn parse_beat(s: &str) -> Option<Beat> {
    let mut it = s.split_whitespace();
    if it.next()? != BEAT_MAGIC || it.next()? != "1" {
        return None;
    }
    let instance = it.next()?.to_string();
    it.next()?.parse::<u64>().ok()?;
    let (holder, handing_over) = match it.next()? {
        "0" => (false, false),
        "1" => (true, false),
        "2" => (true, true),
        _ => return None,
    };
    let forwards = match it.next()? {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let held = it.next().and_then(|n| n.parse().ok());
    Some(Beat {
        instance,
        holder,
        handing_over,
        forwards,
        held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_garbage_is_ignored() {
        let b = |holder, handing_over, forwards, held| Beat {
            instance: "i-a".into(),
            holder,
            handing_over,
            forwards,
            held,
        };
        assert_eq!(
            parse_beat(&beat("i-a", 7, true, false, false, None)),
            Some(b(true, false, false, None))
        );
        assert_eq!(
            parse_beat(&beat("i-a", 8, true, true, true, Some(1200))),
            Some(b(true, true, true, Some(1200)))
        );
        assert_eq!(
            parse_beat(&beat("i-a", 9, false, true, true, Some(0))),
            Some(b(false, false, true, Some(0))),
            "only a holder hands over"
        );
        // A heartbeat of the first format (no count) still reads; one with fields it
        // does not know yet too.
        assert_eq!(
            parse_beat("natd-pair 1 i-a 10 1 1"),
            Some(b(true, false, true, None))
        );
        assert_eq!(
            parse_beat("natd-pair 1 i-a 11 1 1 42 something-new"),
            Some(b(true, false, true, Some(42)))
        );
        for bad in [
            "",
            "natd-pair 2 i-a 1 1 1",
            "natd-pair 1 i-a x 1 1",
            "hello",
        ] {
            assert_eq!(parse_beat(bad), None, "{bad}");
        }
    }
}
