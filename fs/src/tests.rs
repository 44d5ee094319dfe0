//! The filesystem without the kernel: each test drives [`Fs`] as FUSE would and checks what a
//! program would see, and what the drive recorded.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hyperfs_engine::drive::keys;
use hyperfs_engine::store::{MemStore, Store};
use hyperfs_engine::{Drive, SharedDrive};

use crate::{flags, Config, Errno, Fs, Ino, Kind, SetAttr, ROOT};

struct T {
    fs: Fs,
    drive: Arc<SharedDrive>,
    _staging: tempfile::TempDir,
}

fn setup() -> T {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let drive = SharedDrive::new(Drive::create(store, keys::drive_key_pair(&[7; 32], None)).expect("drive"));
    mount(&drive, None)
}

fn mount(drive: &Arc<SharedDrive>, version: Option<u64>) -> T {
    let staging = tempfile::tempdir().expect("staging");
    let cfg = Config { version, read_only: false, staging: staging.path().to_path_buf(), uid: 1000, gid: 100 };
    T { fs: Fs::new(drive.clone(), cfg).expect("fs"), drive: drive.clone(), _staging: staging }
}

impl T {
    fn version(&self) -> u64 {
        self.drive.snapshot().version()
    }

    fn write_file(&self, parent: Ino, name: &str, data: &[u8]) -> Ino {
        let (attr, fh) = self.fs.create(parent, name, 0o644, flags::WRONLY, 1000, 100).expect("create");
        assert_eq!(self.fs.write(fh, 0, data).expect("write"), data.len());
        self.fs.flush(fh).expect("flush");
        self.fs.release(fh).expect("release");
        attr.ino
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let fh = self.fs.open(ino, libc::O_RDONLY).expect("open");
        let mut out = Vec::new();
        loop {
            let chunk = self.fs.read(fh, out.len() as u64, 65536).expect("read");
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        self.fs.release(fh).expect("release");
        out
    }

    fn drive_bytes(&self, path: &str) -> Option<Vec<u8>> {
        self.drive.snapshot().get(path).expect("get")
    }

    /// The names of a directory, read in replies as the kernel asks for them: each from where
    /// the last one stopped, until one is empty.
    fn names(&self, ino: Ino) -> Vec<String> {
        let fh = self.fs.opendir(ino).expect("opendir");
        let mut names: Vec<String> = Vec::new();
        loop {
            let page = self.fs.readdir(fh, names.len() as u64).expect("readdir");
            if page.is_empty() {
                break;
            }
            names.extend(page.into_iter().map(|e| e.name));
        }
        self.fs.releasedir(fh);
        names
    }
}

#[test]
fn a_large_directory_is_listed_over_several_replies_each_name_once() {
    let t = setup();
    let dir = t.fs.mkdir(ROOT, "big", 0o755, 1000, 100).expect("mkdir").ino;
    let n = crate::filesystem::READDIR_MAX + 100;
    let mut expected: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
    for n in &expected {
        t.write_file(dir, n, b"x");
    }
    let fh = t.fs.opendir(dir).expect("opendir");
    assert!(t.fs.readdir(fh, 0).expect("readdir").len() < n + 2, "one reply does not hold it all");
    t.fs.releasedir(fh);
    let mut names = t.names(dir);
    assert_eq!(names.drain(..2).collect::<Vec<_>>(), [".", ".."]);
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn a_listing_named_by_offsets_reads_on_after_it_was_dropped() {
    use crate::fuse::Position;
    let t = setup();
    let dir = t.fs.mkdir(ROOT, "d", 0o755, 1000, 100).expect("mkdir").ino;
    for i in 0..10 {
        t.write_file(dir, &format!("f{i}"), b"x");
    }
    let names = |l: &[crate::DirEntry]| l.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    // Offset 0 takes a listing; the offsets handed out name it and the next entry.
    let start = Position::of(0, 0);
    assert!(start.read_kept(&t.fs).expect("read").is_none(), "offset 0 names no listing");
    let (at, all) = start.read(&t.fs, dir).expect("take");
    assert_eq!(all.len(), 12);
    let after_four = Position::of(0, at.offset_after(4));
    assert_eq!((after_four.listing, after_four.index), (at.listing, 5));
    let (kept, rest) = after_four.read_kept(&t.fs).expect("read").expect("kept");
    assert_eq!((kept, names(&rest)), (after_four, names(&all[5..])));
    // Newer listings push it out: it is taken again, and read on from the same place.
    for _ in 0..super::filesystem::LISTINGS_MAX {
        t.fs.opendir(dir).expect("opendir");
    }
    assert!(after_four.read_kept(&t.fs).expect("read").is_none());
    let (again, rest) = after_four.read(&t.fs, dir).expect("retake");
    assert_ne!(again.listing, at.listing);
    assert_eq!((again.index, names(&rest)), (5, names(&all[5..])));
    // Read to its end, a listing named by offsets is released (no releasedir comes for it).
    let end = Position::of(0, again.offset_after(6));
    assert!(end.read(&t.fs, dir).expect("the end").1.is_empty());
    assert!(Position::of(0, again.offset_after(0)).read_kept(&t.fs).expect("read").is_none(), "released");
}

#[test]
fn a_folder_made_again_where_one_was_listed_with_attributes_starts_without() {
    let t = setup();
    let dir = t.fs.mkdir(ROOT, "d", 0o755, 1000, 100).expect("mkdir").ino;
    t.write_file(dir, "f", b"x");
    assert!(!t.fs.listing_with_attrs(dir));
    t.fs.lookup(dir, "f").expect("lookup");
    assert!(t.fs.listing_with_attrs(dir), "a listing followed by lookups");
    // `rm -r d` (its lookups too) and a new `d`: a new folder, listed plainly at first.
    t.fs.unlink(dir, "f").expect("unlink");
    t.fs.rmdir(ROOT, "d").expect("rmdir");
    let again = t.fs.mkdir(ROOT, "d", 0o755, 1000, 100).expect("mkdir").ino;
    t.write_file(again, "g", b"y");
    assert!(!t.fs.listing_with_attrs(again));
}

#[test]
fn listings_carry_attributes_once_a_listing_was_followed_by_lookups() {
    let t = setup();
    let dir = t.fs.mkdir(ROOT, "d", 0o755, 1000, 100).expect("mkdir").ino;
    let file = t.write_file(dir, "f", b"hello");
    t.fs.symlink(dir, "l", "f", 1000, 100).expect("symlink");
    let open = t.fs.create(dir, "open", 0o600, flags::WRONLY, 1000, 100).expect("create").1;
    t.fs.write(open, 0, b"123").expect("write");
    // A folder never listed, or listed with nobody looking its entries up after: no attributes.
    assert!(!t.fs.listing_with_attrs(dir));
    t.fs.lookup(ROOT, "d").expect("lookup of the folder itself");
    assert!(!t.fs.listing_with_attrs(dir));
    // `ls -l`: a listing, then a lookup of each entry. From then on listings carry them.
    t.fs.lookup(dir, "f").expect("lookup");
    assert!(t.fs.listing_with_attrs(dir));
    assert!(t.fs.listing_with_attrs(dir), "it stays so (the lookups stop once attributes come)");
    // The attributes a listing gives are those a lookup gives, decoded from the listed entries.
    let fh = t.fs.opendir(dir).expect("opendir");
    let listed = t.fs.readdir(fh, 0).expect("readdir");
    let attrs: Vec<_> = listed.iter().map(|e| (e.name.clone(), t.fs.listed_attr(dir, e).expect("attr"))).collect();
    t.fs.releasedir(fh);
    let names: Vec<_> = attrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [".", "..", "f", "l", "open"]);
    for (name, a) in &attrs[2..] {
        let looked_up = t.fs.lookup(dir, name).expect("lookup");
        assert_eq!(
            (a.ino, a.kind, a.size, a.meta.mode),
            (looked_up.ino, looked_up.kind, looked_up.size, looked_up.meta.mode),
            "{name}"
        );
    }
    assert_eq!((attrs[2].1.ino, attrs[2].1.size), (file, 5));
    assert_eq!((attrs[3].1.kind, attrs[3].1.size), (Kind::Symlink, 1));
    assert_eq!(attrs[4].1.size, 3, "a file open for writing shows what was written so far");
    assert_eq!(attrs[0].1.kind, Kind::Dir);
    t.fs.release(open).expect("release");
}

#[test]
fn a_name_keeps_its_inode_after_the_kernel_forgets_it() {
    // The kernel forgets an inode (its caches dropped) while a lookup of the same name is being
    // answered: the lookup's reply carries the number the forget came for, and the kernel then
    // looks up names under it.
    let t = setup();
    let dir = t.fs.mkdir(ROOT, "d", 0o755, 1000, 100).expect("mkdir");
    t.write_file(dir.ino, "f", b"x");
    let looked = t.fs.lookup(ROOT, "d").expect("lookup");
    assert_eq!(looked.ino, dir.ino);
    t.fs.forget(dir.ino, 2);
    assert_eq!(t.fs.lookup(dir.ino, "f").expect("a name under the forgotten inode").size, 1);
    assert_eq!(t.fs.lookup(ROOT, "d").expect("lookup again").ino, dir.ino);
    // An unlinked file's inode does go once forgotten.
    let f = t.fs.lookup(dir.ino, "f").expect("lookup").ino;
    t.fs.unlink(dir.ino, "f").expect("unlink");
    t.fs.forget(f, 3);
    assert_eq!(t.fs.getattr(f).map(|a| a.ino), Err(Errno(libc::ENOENT)));
}

#[test]
fn each_close_of_a_changed_file_is_one_version() {
    let t = setup();
    let v0 = t.version();
    let ino = t.write_file(ROOT, "a.txt", b"hello");
    assert_eq!(t.version(), v0 + 1, "create + write + close is one version");
    assert_eq!(t.drive_bytes("/a.txt").as_deref(), Some(&b"hello"[..]));
    // Opening for writing and closing without a change records nothing.
    let fh = t.fs.open(ino, flags::RDWR).expect("open");
    t.fs.flush(fh).expect("flush");
    t.fs.release(fh).expect("release");
    assert_eq!(t.version(), v0 + 1);
    // Two writes then one close: one version.
    let fh = t.fs.open(ino, flags::WRONLY).expect("open");
    t.fs.write(fh, 5, b" world").expect("write");
    t.fs.write(fh, 0, b"H").expect("write");
    t.fs.release(fh).expect("release");
    assert_eq!(t.version(), v0 + 2);
    assert_eq!(t.read_all(ino), b"Hello world");
    let attr = t.fs.getattr(ino).expect("getattr");
    assert_eq!((attr.size, attr.meta.mode, attr.meta.uid, attr.meta.gid), (11, 0o644, 1000, 100));
}

/// The kernel sends a descriptor's release asynchronously: one that comes after a second
/// descriptor opened the file and truncated it (`open(O_TRUNC)`) records nothing, and the
/// second's close records the file once.
#[test]
fn a_late_release_records_nothing_while_another_descriptor_writes_the_file() {
    let t = setup();
    let (attr, a) = t.fs.create(ROOT, "a.txt", 0o644, flags::WRONLY, 1000, 100).expect("create");
    t.fs.write(a, 0, b"one").expect("write");
    t.fs.flush(a).expect("close");
    let v1 = t.version();
    let b = t.fs.open(attr.ino, flags::WRONLY).expect("open");
    t.fs.setattr(attr.ino, SetAttr { size: Some(0), ..Default::default() }).expect("truncate");
    t.fs.release(a).expect("the first descriptor's late release");
    assert_eq!(t.version(), v1, "the file half rewritten is no version");
    t.fs.write(b, 0, b"two").expect("write");
    t.fs.flush(b).expect("close");
    t.fs.release(b).expect("release");
    assert_eq!(t.version(), v1 + 1, "one version for the second close");
    assert_eq!(t.drive_bytes("/a.txt").as_deref(), Some(&b"two"[..]));
}

#[test]
fn writes_past_the_end_leave_holes_of_zeros_and_truncate_extends_and_cuts() {
    let t = setup();
    let (attr, fh) = t.fs.create(ROOT, "sparse", 0o600, flags::RDWR, 0, 0).expect("create");
    t.fs.write(fh, 1 << 20, b"end").expect("write");
    assert_eq!(t.fs.getattr(attr.ino).expect("attr").size, (1 << 20) + 3);
    assert_eq!(t.fs.read(fh, 1000, 4).expect("read"), vec![0; 4]);
    t.fs.release(fh).expect("release");
    let data = t.drive_bytes("/sparse").expect("file");
    assert_eq!(data.len(), (1 << 20) + 3);
    assert!(data[..1 << 20].iter().all(|&b| b == 0));

    t.fs.setattr(attr.ino, SetAttr { size: Some(10), ..Default::default() }).expect("truncate");
    assert_eq!(t.drive_bytes("/sparse").expect("file"), vec![0; 10]);
    t.fs.setattr(attr.ino, SetAttr { size: Some(20), ..Default::default() }).expect("extend");
    assert_eq!(t.read_all(attr.ino), vec![0; 20]);
}

#[test]
fn append_writes_at_the_end_whatever_the_offset() {
    let t = setup();
    let ino = t.write_file(ROOT, "log", b"one\n");
    let a = t.fs.open(ino, flags::WRONLY | flags::APPEND).expect("open");
    let b = t.fs.open(ino, flags::WRONLY | flags::APPEND).expect("open");
    t.fs.write(a, 0, b"two\n").expect("write");
    t.fs.write(b, 0, b"three\n").expect("write");
    t.fs.release(a).expect("release");
    t.fs.release(b).expect("release");
    assert_eq!(t.read_all(ino), b"one\ntwo\nthree\n");
}

#[test]
fn an_unlinked_open_file_stays_readable_and_leaves_no_entry() {
    let t = setup();
    let ino = t.write_file(ROOT, "gone", b"still here");
    let fh = t.fs.open(ino, libc::O_RDONLY).expect("open");
    t.fs.unlink(ROOT, "gone").expect("unlink");
    assert_eq!(t.fs.lookup(ROOT, "gone"), Err(Errno(libc::ENOENT)));
    assert_eq!(t.fs.read(fh, 0, 100).expect("read"), b"still here");
    assert_eq!(t.fs.getattr(ino).expect("attr").nlink, 0);
    t.fs.release(fh).expect("release");
    assert_eq!(t.drive_bytes("/gone"), None);
}

#[test]
fn rename_follows_posix() {
    let t = setup();
    let a = t.write_file(ROOT, "a", b"new");
    t.write_file(ROOT, "b", b"old");
    // Over an existing file: atomic replace, one db batch (a delete and a put).
    let v = t.version();
    t.fs.rename(ROOT, "a", ROOT, "b", 0).expect("rename");
    assert_eq!(t.version(), v + 2);
    assert_eq!(t.drive_bytes("/b").as_deref(), Some(&b"new"[..]));
    assert_eq!(t.drive_bytes("/a"), None);
    assert_eq!(t.fs.lookup(ROOT, "b").expect("b").ino, a, "the inode moved with its name");

    let d = t.fs.mkdir(ROOT, "d", 0o755, 0, 0).expect("mkdir").ino;
    t.write_file(d, "x", b"x");
    let e = t.fs.mkdir(ROOT, "e", 0o755, 0, 0).expect("mkdir").ino;
    t.write_file(e, "y", b"y");
    assert_eq!(t.fs.rename(ROOT, "b", ROOT, "d", 0), Err(Errno(libc::EISDIR)));
    assert_eq!(t.fs.rename(ROOT, "d", ROOT, "b", 0), Err(Errno(libc::ENOTDIR)));
    assert_eq!(t.fs.rename(ROOT, "d", ROOT, "e", 0), Err(Errno(libc::ENOTEMPTY)));
    assert_eq!(t.fs.rename(ROOT, "d", d, "inside", 0), Err(Errno(libc::EINVAL)));
    assert_eq!(t.fs.rename(ROOT, "b", ROOT, "d", flags::RENAME_NOREPLACE), Err(Errno(libc::EEXIST)));
    assert_eq!(t.fs.rename(ROOT, "nothing", ROOT, "z", 0), Err(Errno(libc::ENOENT)));

    // A directory with its contents, over an empty directory.
    t.fs.mkdir(ROOT, "empty", 0o755, 0, 0).expect("mkdir");
    t.fs.rename(ROOT, "d", ROOT, "empty", 0).expect("rename dir");
    assert_eq!(t.drive_bytes("/empty/x").as_deref(), Some(&b"x"[..]));
    assert_eq!(t.fs.lookup(ROOT, "d"), Err(Errno(libc::ENOENT)));
    assert_eq!(t.fs.lookup(d, "x").map(|_| ()), Ok(()), "the moved directory's inode still resolves");

    // Exchange swaps two files in one batch.
    t.write_file(ROOT, "p", b"P");
    t.write_file(ROOT, "q", b"Q");
    let v = t.version();
    t.fs.rename(ROOT, "p", ROOT, "q", flags::RENAME_EXCHANGE).expect("exchange");
    assert_eq!(t.version(), v + 2, "the two entries");
    assert_eq!(t.drive_bytes("/p").as_deref(), Some(&b"Q"[..]));
    assert_eq!(t.drive_bytes("/q").as_deref(), Some(&b"P"[..]));
}

#[test]
fn directories_are_kept_until_removed_and_rmdir_wants_them_empty() {
    let t = setup();
    let d = t.fs.mkdir(ROOT, "d", 0o750, 0, 0).expect("mkdir").ino;
    assert_eq!(t.fs.getattr(d).expect("attr").meta.mode, 0o750);
    assert_eq!(t.fs.mkdir(ROOT, "d", 0o755, 0, 0), Err(Errno(libc::EEXIST)));
    let sub = t.fs.mkdir(d, "sub", 0o755, 0, 0).expect("mkdir").ino;
    t.write_file(sub, "f", b"f");
    assert_eq!(t.fs.rmdir(ROOT, "d"), Err(Errno(libc::ENOTEMPTY)));
    assert_eq!(t.fs.unlink(ROOT, "d"), Err(Errno(libc::EISDIR)));
    assert_eq!(t.fs.rmdir(d, "sub"), Err(Errno(libc::ENOTEMPTY)));
    t.fs.unlink(sub, "f").expect("unlink");
    assert_eq!(t.names(sub), [".", ".."], "the emptied directory is still there");
    t.fs.rmdir(d, "sub").expect("rmdir");
    t.fs.rmdir(ROOT, "d").expect("rmdir");
    assert_eq!(t.names(ROOT), [".", ".."]);

    // A directory that exists only through a file (as JS writes them) survives losing it.
    t.drive.write().put("/js/only.txt", b"js", &Default::default()).expect("put");
    let js = t.fs.lookup(ROOT, "js").expect("js").ino;
    t.fs.unlink(js, "only.txt").expect("unlink");
    assert_eq!(t.fs.lookup(ROOT, "js").expect("js").kind, Kind::Dir);
}

#[test]
fn attributes_and_symlinks_are_recorded_in_the_entry() {
    let t = setup();
    let ino = t.write_file(ROOT, "script.sh", b"#!/bin/sh\n");
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let set = SetAttr { mode: Some(0o755), mtime: Some(when), uid: Some(5), gid: Some(6), ..SetAttr::default() };
    t.fs.setattr(ino, set).expect("setattr");
    let (_, e) = t.drive.snapshot().entry("/script.sh").expect("entry").expect("some");
    assert!(e.executable, "JS sees the executable bit");
    let again = mount(&t.drive, None);
    let attr = again.fs.lookup(ROOT, "script.sh").expect("lookup");
    assert_eq!((attr.meta.mode, attr.meta.uid, attr.meta.gid, attr.meta.mtime), (0o755, 5, 6, when));

    let l = t.fs.symlink(ROOT, "link", "script.sh", 0, 0).expect("symlink");
    assert_eq!(l.kind, Kind::Symlink);
    assert_eq!(t.fs.readlink(l.ino).expect("readlink"), b"script.sh");
    assert_eq!(t.fs.symlink(ROOT, "link", "x", 0, 0), Err(Errno(libc::EEXIST)));
}

#[test]
fn a_checkout_shows_the_past_and_refuses_changes() {
    let t = setup();
    t.write_file(ROOT, "f", b"first");
    let v = t.version();
    let ino = t.fs.lookup(ROOT, "f").expect("f").ino;
    let fh = t.fs.open(ino, flags::WRONLY | flags::TRUNC).expect("open");
    t.fs.write(fh, 0, b"second").expect("write");
    t.fs.release(fh).expect("release");

    let old = mount(&t.drive, Some(v));
    assert!(old.fs.read_only());
    let f = old.fs.lookup(ROOT, "f").expect("lookup").ino;
    assert_eq!(old.read_all(f), b"first");
    assert_eq!(old.fs.open(f, flags::WRONLY).err(), Some(Errno(libc::EROFS)));
    assert_eq!(old.fs.create(ROOT, "new", 0o644, flags::WRONLY, 0, 0).err(), Some(Errno(libc::EROFS)));
    assert_eq!(old.fs.unlink(ROOT, "f"), Err(Errno(libc::EROFS)));
    assert_eq!(old.fs.mkdir(ROOT, "x", 0o755, 0, 0).err(), Some(Errno(libc::EROFS)));
}

#[test]
fn bad_names_get_clear_errnos() {
    let t = setup();
    assert_eq!(t.fs.lookup(ROOT, &"x".repeat(256)), Err(Errno(libc::ENAMETOOLONG)));
    let f = t.write_file(ROOT, "file", b"");
    assert_eq!(t.fs.lookup(f, "x"), Err(Errno(libc::ENOTDIR)));
    assert_eq!(t.fs.create(ROOT, "file", 0o644, flags::WRONLY | flags::EXCL, 0, 0).err(), Some(Errno(libc::EEXIST)));
}

#[test]
fn a_file_growing_past_the_memory_stage_keeps_every_byte() {
    let t = setup();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (attr, fh) = t.fs.create(ROOT, "grow", 0o644, flags::RDWR, 0, 0).expect("create");
    for (i, part) in data.chunks(65536).enumerate() {
        t.fs.write(fh, (i * 65536) as u64, part).expect("write");
    }
    assert_eq!(t.fs.read(fh, 1_048_000, 1000).expect("read across the spill"), &data[1_048_000..1_049_000]);
    t.fs.release(fh).expect("release");
    assert_eq!(t.drive_bytes("/grow").expect("file"), data);
    // Truncating a small file up past the memory stage leaves zeros.
    t.fs.setattr(attr.ino, SetAttr { size: Some(10), ..Default::default() }).expect("truncate");
    t.fs.setattr(attr.ino, SetAttr { size: Some(2 << 20), ..Default::default() }).expect("extend");
    let back = t.drive_bytes("/grow").expect("file");
    assert_eq!(&back[..10], &data[..10]);
    assert!(back[10..].iter().all(|&b| b == 0) && back.len() == 2 << 20);
}

#[test]
fn a_folders_attributes_follow_every_change_made_here_or_elsewhere() {
    let t = setup();
    let mode = |t: &T, ino| t.fs.getattr(ino).map(|a| a.meta.mode & 0o7777);
    let chmod = |t: &T, ino, m| t.fs.setattr(ino, SetAttr { mode: Some(m), ..Default::default() }).expect("chmod");
    let d = t.fs.mkdir(ROOT, "d", 0o755, 1000, 100).expect("mkdir").ino;
    assert_eq!(mode(&t, d), Ok(0o755));
    chmod(&t, d, 0o700);
    assert_eq!(mode(&t, d), Ok(0o700), "changed here");
    // Files coming and going inside leave it as it is.
    t.write_file(d, "f", b"x");
    t.fs.unlink(d, "f").expect("unlink");
    assert_eq!(mode(&t, d), Ok(0o700));

    // Another mount of the same drive changes it: seen at once, before and after this mount
    // finds out that the drive changed elsewhere.
    let other = mount(&t.drive, None);
    let od = other.fs.lookup(ROOT, "d").expect("lookup").ino;
    chmod(&other, od, 0o750);
    assert!(t.fs.changed_elsewhere());
    assert_eq!(mode(&t, d), Ok(0o750), "after the change was found");
    chmod(&other, od, 0o751);
    assert_eq!(mode(&t, d), Ok(0o751), "before the change was found");
    assert!(t.fs.changed_elsewhere());
    assert_eq!(mode(&t, d), Ok(0o751));
    other.fs.rmdir(ROOT, "d").expect("rmdir");
    assert_eq!(mode(&t, d), Err(Errno(libc::ENOENT)), "removed elsewhere");

    let e = t.fs.mkdir(ROOT, "e", 0o711, 1000, 100).expect("mkdir").ino;
    assert_eq!(mode(&t, e), Ok(0o711));
    t.fs.rmdir(ROOT, "e").expect("rmdir");
    assert_eq!(mode(&t, e), Err(Errno(libc::ENOENT)), "removed here");

    // A folder there only through its contents, recorded when its last file goes, then moved.
    t.drive.write().put("/g/h", b"x", &Default::default()).expect("put");
    assert!(t.fs.changed_elsewhere());
    let g = t.fs.lookup(ROOT, "g").expect("lookup g").ino;
    assert_eq!(mode(&t, g), Ok(0o755), "an unrecorded folder shows the default");
    t.fs.unlink(g, "h").expect("unlink");
    assert_eq!(mode(&t, g), Ok(0o755), "kept by a record when its last file went");
    t.fs.rename(ROOT, "g", ROOT, "g2", 0).expect("rename");
    assert_eq!(t.fs.lookup(ROOT, "g").map(|_| ()), Err(Errno(libc::ENOENT)), "moved away");
    assert_eq!(t.fs.lookup(ROOT, "g2").map(|a| (a.ino, a.meta.mode & 0o7777)), Ok((g, 0o755)));
}

/// A full disk reaches the program as `ENOSPC` by the error's kind (its errno), whatever the
/// message says; a store failure without one is `EIO`.
#[test]
fn a_full_disk_is_enospc_by_its_errno_not_its_message() {
    let full = hyperfs_engine::Error::io("writing blocks.log", std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert_eq!(Errno::from(full), Errno(libc::ENOSPC));
    let quota = hyperfs_engine::Error::io("syncing blocks.log", std::io::Error::from_raw_os_error(libc::EDQUOT));
    assert_eq!(Errno::from(quota), Errno(libc::EDQUOT));
    let worded = hyperfs_engine::Error::Storage("No space left on device (os error 28)".into());
    assert_eq!(Errno::from(worded), Errno(libc::EIO));
    let denied = hyperfs_engine::Error::io("opening blocks.log", std::io::Error::from_raw_os_error(libc::EACCES));
    assert_eq!(Errno::from(denied), Errno(libc::EIO), "the store's own troubles are not the caller's EACCES");
}

#[test]
fn folder_times_recorded_in_bulk_never_wait_on_the_change_that_filled_them() {
    // Changes of names in more folders than wait unrecorded: the change that fills the list
    // records them with the drive it already holds (taking it again waited on itself, and the
    // mount hung).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = setup();
        let dirs: Vec<Ino> =
            (0..1100).map(|i| t.fs.mkdir(ROOT, &format!("d{i}"), 0o755, 0, 0).expect("mkdir").ino).collect();
        let before = std::time::SystemTime::now();
        for d in &dirs {
            t.fs.mkdir(*d, "sub", 0o755, 0, 0).expect("mkdir inside");
        }
        // No sync: the first folders' new times were recorded when the 1,024th waited.
        let d = t.drive.snapshot();
        let record = d.view().dir_entry("/d0").expect("read").expect("d0 has a record");
        let default = t.fs.getattr(dirs[0]).expect("attr").meta;
        let _ = tx.send(hyperfs_engine::drive::Meta::from_json(record.metadata.as_ref(), default).mtime >= before);
    });
    let recorded = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the changes finish");
    assert!(recorded, "the first folders' times were recorded in bulk");
}

#[test]
fn a_special_file_is_never_opened_as_a_file() {
    let t = setup();
    let fifo = t.fs.mknod(ROOT, "p", libc::S_IFIFO | 0o644, 0, 0, 0).expect("mkfifo");
    assert_eq!(t.fs.open(fifo.ino, flags::WRONLY).map(|_| ()), Err(Errno(libc::ENXIO)));
    // A create that finds it (not exclusive) opens nothing either, and writes no file entry.
    assert_eq!(t.fs.create(ROOT, "p", 0o644, flags::WRONLY, 0, 0).map(|_| ()), Err(Errno(libc::ENXIO)));
    assert_eq!(t.drive_bytes("/p"), None);
    assert_eq!(t.fs.lookup(ROOT, "p").expect("lookup").kind, Kind::Special(hyperfs_engine::drive::Special::Fifo));
}

#[test]
fn reads_that_overtake_each_other_as_the_kernels_read_ahead_sends_them_return_their_bytes() {
    let t = setup();
    let data: Vec<u8> = (0..24_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let ino = t.write_file(ROOT, "big", &data);
    let fh = t.fs.open(ino, libc::O_RDONLY).expect("open");
    // Reads of 256 KiB, as kernel threads deliver them: mostly in order, some pairs swapped
    // (one past the window's end before the one at it), some late by several reads (behind
    // the window), and a jump away and back.
    const R: u64 = 256 << 10;
    let n = data.len() as u64 / R + 1;
    let mut order: Vec<u64> = (0..n).collect();
    // Every pair swapped in the first half: at whichever read a window ends, the read past
    // the end comes first, or the one before it comes after the window moved on.
    for i in (2..n as usize / 2).step_by(2) {
        order.swap(i, i + 1);
    }
    for i in (n as usize / 2..n as usize - 5).step_by(13) {
        let late = order.remove(i);
        order.insert(i + 4, late);
    }
    order.insert(40, n - 2);
    for k in order {
        let got = t.fs.read(fh, k * R, R as u32).expect("read");
        let from = ((k * R) as usize).min(data.len());
        let to = (from + R as usize).min(data.len());
        assert!(got == data[from..to], "the read at {} returned other bytes", k * R);
    }
    t.fs.release(fh).expect("release");
}
