//! Multi-writer drives on the node (the merge and the member logs are the engine's
//! `drive::multi`): each member writes its own drive, shares it, and follows the other
//! members' drives as full replicas; a worker per member drive closes what was changed in it
//! (a mount's writes, `put`, `rm`) as the member's changes, and makes it show the merged tree
//! whenever a member's drive moves. Every other command then works on the member's drive as on
//! any drive, and a reader who is no member reads the merged tree from any member's drive.
//!
//! Invites go through a rendezvous drive: `invite` makes a random token T and remembers the
//! key of the drive whose key pair T derives; `join` makes that drive, writes its own writer
//! key and name in it and shares it; the inviter follows that key, adds the member it names,
//! and forgets T (used once; unused, it expires after [`INVITE_LIFE_MS`]).
//!
//! `multi.json` in the data directory: per member drive of this node (hex key), its founder,
//! the drives to follow before membership names them (the inviter's), their peers, invites not
//! used yet, and the rendezvous drive of a join not answered yet.

use super::*;
use hyperfs_engine::crypto::KeyPair;
use hyperfs_engine::drive::members;
use hyperfs_engine::drive::merge::{Clock, Writer};
use hyperfs_engine::drive::multi::{self, MultiDrive};
use hyperfs_engine::drive::shared::{state_of, DriveState};
use hyperfs_engine::drive::Change;
use serde::{Deserialize, Serialize};

/// How long an invite may be used.
pub(super) const INVITE_LIFE_MS: i64 = 24 * 3600 * 1000;
/// The rendezvous drive's file: the joiner's writer key (32 bytes) and its name.
const JOIN_FILE: &str = "/join";
/// A member's name at most (another member's log is anyone's data).
const MAX_NAME: usize = members::MAX_NAME;
const INVITE_PREFIX: &str = "hyperfs-invite:";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Record {
    pub founder: String,
    pub follow: Vec<String>,
    pub peers: Vec<String>,
    pub invites: Vec<Invite>,
    pub rendezvous: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Invite {
    /// The rendezvous drive's key (hex).
    pub key: String,
    pub expires_ms: i64,
}

type Records = BTreeMap<String, Record>;

fn read_records(dir: &Path) -> Result<Records> {
    read_json(dir, "multi.json")
}

/// Changes this node's record of member drive `m`: the one it keeps, and `multi.json` (under
/// the state files' lock).
fn update_record(state: &State, m: &Member, f: impl Fn(&mut Record)) -> Result<()> {
    let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut m.record.lock().unwrap_or_else(|e| e.into_inner()));
    let mut all = read_records(&state.dir)?;
    if let Some(r) = all.get_mut(&hex::encode(m.own.key())) {
        f(r);
        write_json(&state.dir, "multi.json", &all)?;
    }
    Ok(())
}

fn record_of(state: &State, key: &CoreKey) -> Option<Record> {
    read_records(&state.dir).ok()?.remove(&hex::encode(key))
}

/// The other drives a member follows, with their states as the node holds them (none: not
/// found yet).
type Others = Vec<(CoreKey, Option<DriveState>)>;

/// A member drive of this node, kept showing the merged tree by its worker.
pub(super) struct Member {
    own: Arc<SharedDrive>,
    /// Its record in `multi.json`, kept here (a round reads it; [`update_record`] changes both).
    record: Mutex<Record>,
    md: Mutex<MultiDrive>,
    wake: std::sync::mpsc::Sender<()>,
    /// What the merge had of the others when the drive last showed the whole tree.
    seen: Mutex<Clock>,
    /// Drives asked for (being found or followed), and those whose changes wake the worker.
    asked: Mutex<BTreeSet<CoreKey>>,
    watched: Mutex<BTreeSet<CoreKey>>,
    /// The others' states when the drive last showed the whole tree.
    clean: Mutex<Option<Others>>,
}

/// Milliseconds since the epoch, now.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The key pair of the rendezvous drive of invite token `token`, and the drive's key.
fn rendezvous(token: &[u8; 32]) -> (KeyPair, CoreKey) {
    let pair = KeyPair::from_seed(&hyperfs_engine::crypto::hash(&[b"hyperfs invite", token]));
    let key = CoreKey(hyperfs_engine::hypercore::Manifest::single(pair.public_key()).hash());
    (pair, key)
}

/// Starts the workers of the member drives this node had (at the node's start).
pub(super) fn resume_members(state: &Arc<State>) {
    let records = match read_records(&state.dir) {
        Ok(r) => r,
        Err(e) => return tracing::warn!(error = %e, "not resuming multi-writer drives"),
    };
    for (key, _) in records {
        if let Err(e) = crate::local::parse_key(&key).and_then(|k| start_member(state, &k)) {
            tracing::warn!(drive = %log_id(&key), error = %e, "resuming a multi-writer drive");
        }
    }
}

/// The member drive `key` of this node, its worker started if it was not.
fn start_member(state: &State, key: &CoreKey) -> Result<Arc<Member>> {
    if let Some(m) = state.multi.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
        return Ok(m.clone());
    }
    let record = record_of(state, key).ok_or_else(|| anyhow!("{} is not a multi-writer drive", hex::encode(key)))?;
    let founder = Writer(crate::local::parse_key(&record.founder)?.0);
    let own = open_drive(state, &hex::encode(key))?;
    if own.snapshot().db().core().length() == 0 {
        // Peers wait for a drive's first block: a member that wrote nothing yet is found too.
        let mark = (members::VIEW.to_vec(), Some(members::encode_clock(&Clock::default())));
        own.write().apply_with(&[], &[mark])?;
    }
    let (wake, woken) = std::sync::mpsc::channel();
    let md = MultiDrive::new(founder, own.snapshot().frozen_copy(), Vec::new());
    let member = Arc::new(Member {
        own: own.clone(),
        record: Mutex::new(record),
        md: Mutex::new(md),
        wake: wake.clone(),
        seen: Mutex::new(Clock::default()),
        asked: Mutex::new(BTreeSet::new()),
        watched: Mutex::new(BTreeSet::new()),
        clean: Mutex::new(None),
    });
    own.on_change(Arc::new(move |_| {
        let _ = wake.send(());
    }));
    let net = net(state, &NetOptions::default())?;
    net.share(&own, true, false);
    remember_share(state, key, Some((true, false)))?;
    state.multi.lock().unwrap_or_else(|e| e.into_inner()).insert(*key, member.clone());
    let weak = state.me.clone();
    let m = member.clone();
    std::thread::Builder::new().name("hyperfs-member".into()).spawn(move || {
        loop {
            let Some(state) = weak.upgrade() else { return };
            if state.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = step(&state, &m) {
                tracing::warn!(drive = %log_id(&hex::encode(m.own.key())), error = %format!("{e:#}"), "multi-writer drive");
            }
            drop(state);
            // Woken by any member drive's change; a look every second all the same (invites,
            // members being found). A burst of changes (a copy into the mount) is taken as
            // one once it pauses for 3 ms, or every half second: each closing and each view
            // is a version the mounts take in whole.
            use std::sync::mpsc::RecvTimeoutError;
            use std::time::Duration;
            if let Err(RecvTimeoutError::Disconnected) = woken.recv_timeout(Duration::from_secs(1)) {
                return;
            }
            let burst = std::time::Instant::now();
            while burst.elapsed() < Duration::from_millis(500) {
                match woken.recv_timeout(Duration::from_millis(3)) {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    })?;
    Ok(member)
}

/// One round of a member drive's worker: close what was changed in it, take in the other
/// members' drives as they are now, follow members not followed yet, show the merged tree,
/// and answer invites.
fn step(state: &State, m: &Member) -> Result<()> {
    tracing::trace!(drive = %log_id(&hex::encode(m.own.key())), "multi-writer step");
    let seen = m.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The drive as it is once closed, taken under the same hold: a view worked out from a
    // state holding edits not closed yet would find their files in no member's changes and
    // delete them, and its marker would make them no change at all.
    let (own_version, own_copy) = {
        let mut own = m.own.write();
        if let Some(tail) = multi::closing(&own, &seen)? {
            own.apply_with(&[], &tail)?;
        }
        (own.version(), own.frozen_copy())
    };
    let record = m.record.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Only this member's drive changed since its drive last showed the whole tree: what it
    // changed came after everything shown, so the tree is what the drive now holds.
    let others_now = others_state(state, m);
    let waiting = !record.invites.is_empty() || record.rendezvous.is_some();
    if !waiting && m.clean.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&others_now) {
        return Ok(());
    }
    let mut md = m.md.lock().unwrap_or_else(|e| e.into_inner());
    md.set_own(own_copy);
    // The others, as this node holds them now. (A view changes no membership: the members
    // now are the members after it.)
    let members = md.members()?;
    let me = md.writer();
    let member_now = members.iter().any(|(w, _)| *w == me);
    let mut wanted: BTreeSet<CoreKey> = members.into_iter().map(|(w, _)| CoreKey(w.0)).collect();
    for k in record.follow.iter().chain([&record.founder]) {
        wanted.insert(crate::local::parse_key(k)?);
    }
    wanted.remove(m.own.key());
    for key in &wanted {
        let held = state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        match held {
            Some(d) if !d.writable() => {
                watch(m, &d);
                let copy = d.snapshot().frozen_copy();
                let others = md.others_mut();
                match others.iter_mut().find(|o| o.key() == key) {
                    // A new version, or blobs that arrived after the version naming them.
                    Some(o) if state_of(o) != state_of(&copy) => *o = copy,
                    Some(_) => {}
                    None => others.push(copy),
                }
            }
            _ => ask_for(state, m, key, &record.peers),
        }
    }
    // The merged tree, shown once nothing new was written in the drive meanwhile.
    let (steps, mut clock) = md.view_steps()?;
    let mut whole = true;
    if !steps.is_empty() {
        // Copied content is read and chunked without the drive (a mount writes on meanwhile),
        // which is held only for the commit.
        let n = steps.len();
        let view = md.prepare_view(steps)?;
        // A file another member names but does not give is left out, and tried again next
        // round; the others show meanwhile.
        for (w, seq, e) in &view.skipped {
            tracing::warn!(member = %hex::encode(w.0), seq, error = %e, "a member's file could not be read");
        }
        whole = view.skipped.is_empty();
        clock = view.seen(&clock);
        let mut own = m.own.write();
        if own.version() != own_version {
            let _ = m.wake.send(());
            return Ok(());
        }
        md.apply_view(&mut own, view, &clock)?;
        tracing::debug!(steps = n, "showing the merged tree");
    }
    *m.seen.lock().unwrap_or_else(|e| e.into_inner()) = clock;
    if whole {
        *m.clean.lock().unwrap_or_else(|e| e.into_inner()) = Some(others_now);
    }
    drop(md);
    answer_invites(state, m, &record)?;
    // A join answered: its rendezvous drive has done its work.
    if let (Some(r), true) = (&record.rendezvous, member_now) {
        update_record(state, m, |rec| rec.rendezvous = None)?;
        if let Err(e) = remove_drive(state, r, true) {
            tracing::info!(error = %e, "removing a rendezvous drive");
        }
    }
    Ok(())
}

/// The state of every other drive `m` follows or asks for, as this node holds it.
fn others_state(state: &State, m: &Member) -> Others {
    let keys: BTreeSet<CoreKey> = m
        .watched
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .chain(m.asked.lock().unwrap_or_else(|e| e.into_inner()).iter())
        .copied()
        .collect();
    let drives = state.drives.lock().unwrap_or_else(|e| e.into_inner());
    keys.into_iter().map(|k| (k, drives.get(&k).map(|d| state_of(&d.snapshot())))).collect()
}

/// Wakes `m`'s worker whenever drive `d` changes.
fn watch(m: &Member, d: &Arc<SharedDrive>) {
    if m.watched.lock().unwrap_or_else(|e| e.into_inner()).insert(*d.key()) {
        let wake = m.wake.clone();
        d.on_change(Arc::new(move |_| {
            let _ = wake.send(());
        }));
    }
}

/// Follows drive `key` as a full replica, found in the background (on the LAN, the DHT, at
/// `peers`), once.
fn ask_for(state: &State, m: &Member, key: &CoreKey, peers: &[String]) {
    if !m.asked.lock().unwrap_or_else(|e| e.into_inner()).insert(*key) {
        return;
    }
    let (weak, key, peers, wake) = (state.me.clone(), *key, peers.to_vec(), m.wake.clone());
    tracing::debug!(drive = %log_id(&hex::encode(key)), "looking for a member's drive");
    let spawned = std::thread::Builder::new().name("hyperfs-member-find".into()).spawn(move || loop {
        let Some(state) = weak.upgrade() else { return };
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        match replicate(&state, &key, &peers, &NetOptions::default(), true) {
            Ok(_) => {
                let _ = wake.send(());
                return;
            }
            Err(e) => tracing::debug!(drive = %log_id(&hex::encode(key)), error = %e, "a member's drive"),
        }
        drop(state);
        std::thread::sleep(std::time::Duration::from_secs(2));
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "following a member's drive");
    }
}

/// Adds the members that used this node's invites, and forgets expired invites.
fn answer_invites(state: &State, m: &Member, record: &Record) -> Result<()> {
    for invite in &record.invites {
        let key = crate::local::parse_key(&invite.key)?;
        let expired = invite.expires_ms < now_ms();
        let held = state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let record = held.as_ref().and_then(|d| {
            let d = d.snapshot();
            // Read only when small: the drive is anyone's who holds the invite.
            d.stat(JOIN_FILE).ok()?.filter(|st| st.size <= (32 + MAX_NAME) as u64)?;
            d.get(JOIN_FILE).ok()?
        });
        let joined = record.and_then(|v| {
            let name = v.get(32..).filter(|n| n.len() <= MAX_NAME).and_then(|n| std::str::from_utf8(n).ok())?;
            Some((Writer(v.get(..32)?.try_into().ok()?), name.to_owned()))
        });
        if let Some((writer, name)) = &joined {
            let seen = m.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            multi::change_membership(&mut m.own.write(), &seen, *writer, Some(name))?;
            tracing::info!(member = %hex::encode(writer.0), %name, "a member joined");
        }
        if joined.is_some() || expired {
            update_record(state, m, |r| r.invites.retain(|i| i.key != invite.key))?;
            if held.is_some() {
                if let Err(e) = remove_drive(state, &invite.key, false) {
                    tracing::info!(error = %e, "removing a rendezvous drive");
                }
            }
        } else if held.is_none() {
            ask_for(state, m, &key, &[]);
        }
    }
    Ok(())
}

/// `create --multiwriter`: a drive this node founds, with itself its first member.
pub(super) fn create_multi(state: &State, name: Option<&str>) -> Result<api::Named> {
    let named = create(state, name)?;
    let key = crate::local::parse_key(&named.key)?;
    {
        let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = read_records(&state.dir)?;
        all.insert(named.key.clone(), Record { founder: named.key.clone(), ..Default::default() });
        write_json(&state.dir, "multi.json", &all)?;
    }
    let m = start_member(state, &key)?;
    // The founder's name, as the members it adds get theirs.
    multi::change_membership(&mut m.own.write(), &Clock::default(), Writer(key.0), Some(&named.name))?;
    Ok(named)
}

/// The member drive `which` of this node.
fn member(state: &State, which: &str) -> Result<Arc<Member>> {
    let key = drive_key(state, which)?;
    let started = state.multi.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key);
    if !started && record_of(state, &key).is_none() {
        bail!("{which} is not a multi-writer drive (hyperfs create --multiwriter makes one)");
    }
    start_member(state, &key)
}

/// `invite DRIVE`: a one-line invite a new device joins with.
pub(super) fn invite(state: &State, which: &str) -> Result<api::Invitation> {
    let m = member(state, which)?;
    let founder = m.md.lock().unwrap_or_else(|e| e.into_inner()).founder();
    let mut token = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut token);
    let (_, rendezvous) = rendezvous(&token);
    let expires_ms = now_ms() + INVITE_LIFE_MS;
    update_record(state, &m, |r| r.invites.push(Invite { key: hex::encode(rendezvous), expires_ms }))?;
    let _ = m.wake.send(());
    let invite =
        format!("{INVITE_PREFIX}{}.{}.{}", z32_encode(&founder.0), z32_encode(&m.own.key().0), z32_encode(&token));
    Ok(api::Invitation { invite, expires_ms })
}

/// `join INVITE`: makes a member drive on this node, asks to be added through the invite's
/// rendezvous drive, and waits up to `wait` for a member to add it.
pub(super) fn join(
    state: &State,
    invite: &str,
    name: Option<&str>,
    r: &NetOptions,
    wait: std::time::Duration,
) -> Result<api::Joined> {
    let parts: Vec<Vec<u8>> = invite
        .trim()
        .strip_prefix(INVITE_PREFIX)
        .map(|rest| rest.split('.').filter_map(hyperfs_engine::crypto::z32_decode).collect())
        .unwrap_or_default();
    let [founder, inviter, token] = parts.as_slice() else { bail!("not an invite (hyperfs invite DRIVE prints one)") };
    let key32 =
        |b: &[u8]| -> Result<[u8; 32]> { b.try_into().map_err(|_| anyhow!("not an invite: a key is not 32 bytes")) };
    let (founder, inviter, token) = (key32(founder)?, key32(inviter)?, key32(token)?);
    let (pair, rendezvous) = rendezvous(&token);
    let removed: BTreeSet<String> = read_json(&state.dir, "removed.json")?;
    let store: Arc<dyn Store> = state.store.clone();
    if removed.contains(&hex::encode(pair.public_key())) || Drive::open(store.clone(), &rendezvous)?.is_some() {
        bail!("this invite was used on this node already");
    }
    if name.is_some_and(|n| n.len() > MAX_NAME) {
        bail!("a member's name is at most {MAX_NAME} bytes");
    }
    let net = net(state, r)?;
    let named = create(state, name)?;
    let own = crate::local::parse_key(&named.key)?;
    // The rendezvous drive: this member's key and name, for the inviter to find.
    let mut drive = Drive::create(store, pair)?;
    if *drive.key() != rendezvous {
        bail!("the rendezvous drive's key is not the one the invite names");
    }
    // A file (the inviter's wait for the drive ends at its first blob), readable by any drive
    // reader: this member's key and name.
    let record = [&own.0[..], named.name.as_bytes()].concat();
    drive.put(JOIN_FILE, &record, &PutOptions::default())?;
    let drive = SharedDrive::new(drive);
    state.drives.lock().unwrap_or_else(|e| e.into_inner()).insert(rendezvous, drive.clone());
    net.share(&drive, true, false);
    remember_share(state, &rendezvous, Some((true, false)))?;
    {
        let _g = state.state_files.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = read_records(&state.dir)?;
        let follow = vec![hex::encode(founder), hex::encode(inviter)];
        let rec = Record {
            founder: hex::encode(founder),
            follow,
            peers: r.peers.clone(),
            invites: Vec::new(),
            rendezvous: Some(hex::encode(rendezvous)),
        };
        all.insert(named.key.clone(), rec);
        write_json(&state.dir, "multi.json", &all)?;
    }
    for k in [founder, inviter] {
        net.connect_for(&CoreKey(k), &r.peers)?;
    }
    let m = start_member(state, &own)?;
    let deadline = std::time::Instant::now() + wait;
    let me = Writer(own.0);
    let member = loop {
        let is = m.md.lock().unwrap_or_else(|e| e.into_inner()).members()?.iter().any(|(w, _)| *w == me);
        if is || std::time::Instant::now() > deadline {
            break is;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ok(api::Joined { name: named.name, key: named.key, founder: hex::encode(founder), member })
}

/// `members DRIVE`: who may write, as this member knows.
pub(super) fn members(state: &State, which: &str) -> Result<Vec<api::MemberInfo>> {
    let m = member(state, which)?;
    let md = m.md.lock().unwrap_or_else(|e| e.into_inner());
    let (me, founder) = (md.writer(), md.founder());
    let mut out = Vec::new();
    for (w, name) in md.members()? {
        let key = CoreKey(w.0);
        let version = if w == me {
            Some(m.own.snapshot().db().version())
        } else {
            state.drives.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(|d| d.snapshot().db().version())
        };
        out.push(api::MemberInfo { key: hex::encode(w.0), name, me: w == me, founder: w == founder, version });
    }
    Ok(out)
}

/// `members rm DRIVE MEMBER` (its name or the start of its key): what it writes from now on
/// is not taken.
pub(super) fn remove_member(state: &State, which: &str, who: &str) -> Result<api::MemberInfo> {
    let all = members(state, which)?;
    let found: Vec<&api::MemberInfo> = all.iter().filter(|i| i.name == who || i.key.starts_with(who)).collect();
    let gone = match found.as_slice() {
        [one] => (*one).clone(),
        [] => bail!("{which} has no member {who:?} (hyperfs members {which} lists them)"),
        _ => bail!("{who:?} names several members of {which}: give more of the key"),
    };
    if gone.me {
        bail!("{who} is this node: another member removes it");
    }
    let m = member(state, which)?;
    let seen = m.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    multi::change_membership(&mut m.own.write(), &seen, Writer(crate::local::parse_key(&gone.key)?.0), None)?;
    Ok(gone)
}

/// For `log` of member drive `key`: who made each change of `history` (its drive's), by
/// member name (or the start of its key): the member's own changes are its, and what its drive
/// shows of the others (batches closed by a view marker) is the member's whose change it
/// shows (the change at that path with that entry's metadata; `None` when none is held).
/// `None` for a drive that is no member drive.
pub(super) fn authors(
    state: &State,
    key: &CoreKey,
    d: &Drive,
    history: &[Change],
) -> Result<Option<Vec<Option<String>>>> {
    let Some(m) = state.multi.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned() else { return Ok(None) };
    let md = m.md.lock().unwrap_or_else(|e| e.into_inner());
    let names: BTreeMap<Writer, String> = md.members()?.into_iter().collect();
    let label = |w: &Writer| match names.get(w).filter(|n| !n.is_empty()) {
        Some(n) => n.clone(),
        None => hex::encode(w.0)[..8].to_owned(),
    };
    // Where each batch ends, and whether a view marker ends it.
    let mut markers = Vec::new();
    let range = hyperfs_engine::hyperbee::HistoryRange::default();
    for h in d.db().view().history(&range) {
        let h = h?;
        let k = h.entry.key.as_slice();
        if !h.deletion && (k == members::CLOCK || k == members::VIEW) {
            markers.push((h.entry.seq, k == members::VIEW));
        }
    }
    let mut shown: std::collections::HashMap<(String, Option<String>), Writer> = Default::default();
    for c in md.changes()? {
        let meta = match &c.op {
            hyperfs_engine::drive::merge::Op::Put { value: members::Value::File(e), .. } => {
                e.metadata.as_ref().map(|m| m.to_string())
            }
            _ => None,
        };
        shown.insert((c.path.clone(), meta), c.writer);
    }
    let me = md.writer();
    Ok(Some(
        history
            .iter()
            .map(|c| {
                let at = markers.partition_point(|(seq, _)| *seq < c.seq);
                match markers.get(at) {
                    Some((_, false)) => Some(label(&me)),
                    Some((_, true)) => {
                        let meta = c.entry.as_ref().and_then(|e| e.metadata.as_ref()).map(|m| m.to_string());
                        shown.get(&(c.path.clone(), meta)).map(&label)
                    }
                    None => None,
                }
            })
            .collect(),
    ))
}
