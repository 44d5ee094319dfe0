//! POSIX attributes of a file, symlink or directory, kept in its entry's `metadata` JSON so a JS
//! Hyperdrive carries them along untouched:
//! `{"mode": 420, "uid": 1000, "gid": 1000, "mtime": 1700000000123, "ctime": 1700000000123}`.
//!
//! `mode` holds the permission bits (`0o7777`); times are milliseconds since the epoch, as JS
//! writes them, with the nanoseconds below the millisecond in `mtimeNs` / `ctimeNs` when they are
//! not zero. `atime` (with `atimeNs`) is kept only when it differs from `mtime`, which it reads
//! as when absent. Entries written without these fields (by JS, or by `hyperfs put`) get defaults: mode
//! 0644 (0755 when `executable`), the mount owner, and the given fallback time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// The attributes hyperfs keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// The last access (set by `utimensat`, moved on by reads as `relatime` does).
    pub atime: SystemTime,
}

impl Meta {
    /// Reads the attributes from an entry's metadata, filling what is missing from `default`.
    pub fn from_json(metadata: Option<&Value>, default: Meta) -> Meta {
        let Some(Value::Object(m)) = metadata else { return default };
        let u32_of = |k: &str| m.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
        let mtime = time_of(m, "mtime");
        Meta {
            mode: u32_of("mode").map_or(default.mode, |m| m & 0o7777),
            uid: u32_of("uid").unwrap_or(default.uid),
            gid: u32_of("gid").unwrap_or(default.gid),
            mtime: mtime.unwrap_or(default.mtime),
            ctime: time_of(m, "ctime").unwrap_or(default.ctime),
            atime: time_of(m, "atime").or(mtime).unwrap_or(default.atime),
        }
    }

    /// These attributes merged into `metadata` (other keys a writer put there are kept).
    pub fn to_json(&self, metadata: Option<&Value>) -> Value {
        let mut m = match metadata {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        m.insert("mode".into(), json!(self.mode));
        m.insert("uid".into(), json!(self.uid));
        m.insert("gid".into(), json!(self.gid));
        put_time(&mut m, "mtime", self.mtime);
        put_time(&mut m, "ctime", self.ctime);
        if self.atime == self.mtime {
            m.remove("atime");
            m.remove("atimeNs");
        } else {
            put_time(&mut m, "atime", self.atime);
        }
        Value::Object(m)
    }
}

/// Seconds since 1970 as a UTC date and time: (year, month, day, hour, minute, second), by
/// Howard Hinnant's days-to-civil.
pub fn utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn time_of(m: &Map<String, Value>, key: &str) -> Option<SystemTime> {
    let ms = m.get(key)?.as_i64()?;
    let ns = m.get(&format!("{key}Ns")).and_then(Value::as_u64).filter(|&n| n < 1_000_000).unwrap_or(0);
    let since = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 { UNIX_EPOCH.checked_add(since)? } else { UNIX_EPOCH.checked_sub(since)? };
    t.checked_add(Duration::from_nanos(ns))
}

fn put_time(m: &mut Map<String, Value>, key: &str, t: SystemTime) {
    // Milliseconds rounded down (towards the past) and the nanoseconds above them.
    let (ms, ns) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_millis() as i64, d.subsec_nanos() % 1_000_000),
        Err(e) => {
            let d = e.duration();
            let whole = d.as_millis() as i64 + i64::from(d.subsec_nanos() % 1_000_000 != 0);
            (-whole, (1_000_000 - d.subsec_nanos() % 1_000_000) % 1_000_000)
        }
    };
    m.insert(key.into(), json!(ms));
    if ns == 0 {
        m.remove(&format!("{key}Ns"));
    } else {
        m.insert(format!("{key}Ns"), json!(ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Meta {
        Meta { mode: 0o644, uid: 1, gid: 2, mtime: UNIX_EPOCH, ctime: UNIX_EPOCH, atime: UNIX_EPOCH }
    }

    #[test]
    fn round_trips_to_the_nanosecond_and_keeps_other_keys() {
        for t in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH + Duration::new(5, 0),
            UNIX_EPOCH - Duration::new(3, 250_000_001),
        ] {
            let m = Meta { mode: 0o4755, uid: 1000, gid: 100, mtime: t, ctime: t, atime: t };
            let json = m.to_json(Some(&json!({"author": "x"})));
            assert_eq!(json["author"], "x");
            assert!(json.get("atime").is_none(), "an atime equal to the mtime is not written");
            assert_eq!(Meta::from_json(Some(&json), base()), m, "{json}");
            let read = Meta { atime: t + Duration::new(86_400, 7), ..m };
            assert_eq!(Meta::from_json(Some(&read.to_json(None)), base()), read);
        }
    }

    #[test]
    fn js_entries_without_attributes_get_the_defaults() {
        assert_eq!(Meta::from_json(None, base()), base());
        assert_eq!(Meta::from_json(Some(&json!({"mtime": 1000})), base()).mtime, UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(Meta::from_json(Some(&json!({"mode": 0o100755})), base()).mode, 0o755);
    }
}
