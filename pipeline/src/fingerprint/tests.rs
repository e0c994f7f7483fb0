//! The fingerprint cache: hits, changes, refused files, and what each check stats.

use super::*;

/// A data folder, and a fingerprint cache in a folder of its own.
fn scratch() -> (tempfile::TempDir, tempfile::TempDir, FingerprintCache) {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let c = FingerprintCache::new(cache.path());
    (data, cache, c)
}

#[test]
fn malformed_digests_from_the_store_are_not_found_rather_than_panicking() {
    let (data, _cache, c) = scratch();
    fs::write(data.path().join("y.txt"), b"world").unwrap();
    c.fingerprint(data.path(), false).unwrap();
    for bad in ["", "abc", "ééééééééé", "../../../../etc/passwd"] {
        assert_eq!(c.changes_since(data.path(), bad), None, "{bad}");
    }
}

#[test]
fn cache_hit_changed_content_and_touch() {
    let (data, _cache, c) = scratch();
    fs::create_dir_all(data.path().join("a/b")).unwrap();
    fs::write(data.path().join("a/b/x.txt"), b"hello").unwrap();
    fs::write(data.path().join("y.txt"), b"world").unwrap();

    let first = c.fingerprint(data.path(), false).unwrap();
    assert_eq!((first.files, first.bytes, first.rehashed), (2, 10, 2));
    let second = c.fingerprint(data.path(), false).unwrap();
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.rehashed, 0);

    // Rewriting the same bytes changes the stat, not the digest; only that file is rehashed.
    fs::write(data.path().join("y.txt"), b"world").unwrap();
    let touched = c.fingerprint(data.path(), false).unwrap();
    assert_eq!(touched.digest, first.digest);
    assert!(touched.rehashed <= 1);

    fs::write(data.path().join("y.txt"), b"World").unwrap();
    let changed = c.fingerprint(data.path(), false).unwrap();
    assert_ne!(changed.digest, first.digest);

    let verified = c.fingerprint(data.path(), true).unwrap();
    assert_eq!(verified.digest, changed.digest);
    assert_eq!(verified.rehashed, 2);
    assert!(verified.mismatched.is_empty());
}

#[test]
fn a_fifo_socket_or_device_is_refused_by_name_without_blocking() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    fs::write(data.path().join("ok.txt"), b"1").unwrap();
    let fifo = data.path().join("labels.csv");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let sock = data.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (root, cache_dir) = (data.path().to_path_buf(), cache.path().to_path_buf());
    std::thread::spawn(move || {
        let c = FingerprintCache::new(cache_dir);
        let _ = tx.send((
            c.fingerprint(&root, false).map_err(|e| e.to_string()),
            c.fingerprint(&root.join("labels.csv"), false)
                .map_err(|e| e.to_string()),
            hash_file(Path::new("/dev/zero"), 0).map_err(|e| e.to_string()),
        ));
    });
    let (folder, single, device) = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("fingerprinting blocked");
    let folder = folder.unwrap_err();
    assert!(
        folder.contains("labels.csv") && folder.contains("FIFO")
            || folder.contains("sock") && folder.contains("socket"),
        "{folder}"
    );
    let single = single.unwrap_err();
    assert!(single.contains("labels.csv: is a FIFO"), "{single}");
    let device = device.unwrap_err();
    assert!(
        device.contains("/dev/zero: is a character device"),
        "{device}"
    );
}

#[test]
fn renaming_a_file_changes_the_digest() {
    let (data, _cache, c) = scratch();
    fs::write(data.path().join("a"), b"1").unwrap();
    let d1 = c.fingerprint(data.path(), false).unwrap().digest;
    fs::rename(data.path().join("a"), data.path().join("b")).unwrap();
    assert_ne!(c.fingerprint(data.path(), false).unwrap().digest, d1);
}

/// `p0/s0/f0.txt` ... : 10 × 10 folders of 20 files (2,000 files, 111 folders with the two
/// levels and the root), every folder's mtime an hour back so that none is racily recent.
fn tree(root: &Path) {
    for p in 0..10 {
        for s in 0..10 {
            let dir = root.join(format!("p{p}/s{s}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..20 {
                fs::write(dir.join(format!("f{f}.txt")), format!("{p}-{s}-{f}")).unwrap();
            }
        }
    }
    age_folders(root);
}

/// Sets the mtime of `root` and every folder under it an hour back.
fn age_folders(root: &Path) {
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
        fs::File::open(&dir)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
}

/// The digest of `root` from a cache that has never seen it.
fn fresh_digest(root: &Path) -> String {
    let cache = tempfile::tempdir().unwrap();
    FingerprintCache::new(cache.path())
        .fingerprint(root, false)
        .unwrap()
        .digest
}

/// (files stat'ed, folders stat'ed, folders listed, files rehashed)
fn counts(f: &Fingerprint) -> (u64, u64, u64, u64) {
    (
        f.files_checked,
        f.folders_checked,
        f.folders_listed,
        f.rehashed,
    )
}

#[test]
fn every_check_gives_the_same_digest_and_a_no_op_stats_what_its_check_says() {
    let (data, _cache, c) = scratch();
    tree(data.path());
    let digest = fresh_digest(data.path());
    for check in [Check::Files, Check::Folders, Check::Immutable] {
        let (_d, _c, c) = scratch();
        let first = c.fingerprint_with(data.path(), check, false).unwrap();
        assert_eq!(first.digest, digest, "{check:?}");
        assert_eq!(first.files, 2000);
        let again = c.fingerprint_with(data.path(), check, false).unwrap();
        assert_eq!(again.digest, digest, "{check:?}");
        let expected = match check {
            Check::Files => (2000, 0, 0, 0),
            Check::Folders => (0, 111, 0, 0),
            Check::Immutable => (0, 0, 0, 0),
        };
        assert_eq!(counts(&again), expected, "{check:?}");
    }
    // The first fingerprint with `folders` lists every folder and stats every file.
    let first = c
        .fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    assert_eq!(counts(&first), (2000, 111, 111, 2000));
}

#[test]
fn a_file_added_removed_renamed_or_replaced_is_seen_by_restating_only_its_folder() {
    let (data, _cache, c) = scratch();
    tree(data.path());
    c.fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    let dir = data.path().join("p3/s4");
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>, u64);
    let changes: Vec<Change> = vec![
        (
            "add",
            Box::new(|| fs::write(dir.join("new.txt"), b"x").unwrap()),
            21,
        ),
        (
            "remove",
            Box::new(|| fs::remove_file(dir.join("f0.txt")).unwrap()),
            20,
        ),
        (
            "rename",
            Box::new(|| fs::rename(dir.join("f1.txt"), dir.join("g1.txt")).unwrap()),
            20,
        ),
        (
            // Written beside and renamed over, as editors and most tools do: a new inode.
            "replace with other bytes",
            Box::new(|| {
                fs::write(dir.join("tmp"), b"longer than before").unwrap();
                fs::rename(dir.join("tmp"), dir.join("f2.txt")).unwrap();
            }),
            20,
        ),
    ];
    let mut last = fresh_digest(data.path());
    for (what, change, files_in_folder) in changes {
        change();
        let f = c
            .fingerprint_with(data.path(), Check::Folders, false)
            .unwrap();
        assert_ne!(f.digest, last, "{what}");
        assert_eq!(f.digest, fresh_digest(data.path()), "{what}");
        // One folder listed, its files stat'ed; every folder stat'ed, no other file.
        assert_eq!(
            (f.files_checked, f.folders_checked, f.folders_listed),
            (files_in_folder, 111, 1),
            "{what}"
        );
        assert!(f.rehashed <= 1, "{what}: {}", f.rehashed);
        last = f.digest;
    }
    // The changed folder is racily recent until it is listed once more than two seconds after
    // its change; then the no-op stats folders only again.
    age_folders(&dir);
    let f = c
        .fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    assert_eq!((f.digest.as_str(), f.folders_listed), (last.as_str(), 1));
    let f = c
        .fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    assert_eq!(counts(&f), (0, 111, 0, 0));
    assert_eq!(f.digest, last);
}

#[test]
fn a_file_rewritten_in_place_is_left_to_verify_with_folders_and_to_it_alone_with_immutable() {
    let (data, _cache, c) = scratch();
    tree(data.path());
    let (_d, _c, imm) = scratch();
    let before = c
        .fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    imm.fingerprint_with(data.path(), Check::Immutable, false)
        .unwrap();
    // Same size, same name: no folder changes.
    fs::write(data.path().join("p3/s4/f7.txt"), b"X-4-7").unwrap();
    fs::write(data.path().join("p0/new.txt"), b"new").unwrap();
    let unseen = c
        .fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    assert_ne!(unseen.digest, before.digest, "the added file is seen");
    let imm_unseen = imm
        .fingerprint_with(data.path(), Check::Immutable, false)
        .unwrap();
    assert_eq!(imm_unseen.digest, before.digest, "immutable sees nothing");
    assert_eq!(counts(&imm_unseen), (0, 0, 0, 0));

    let truth = fresh_digest(data.path());
    assert_ne!(
        unseen.digest, truth,
        "the rewrite is not seen without --verify"
    );
    let verified = c
        .fingerprint_with(data.path(), Check::Folders, true)
        .unwrap();
    assert_eq!(verified.digest, truth);
    assert_eq!(verified.rehashed, 2001);
    assert_eq!(verified.mismatched, vec!["p3/s4/f7.txt".to_string()]);
    let verified = imm
        .fingerprint_with(data.path(), Check::Immutable, true)
        .unwrap();
    assert_eq!(
        (verified.digest.as_str(), verified.rehashed),
        (truth.as_str(), 2001)
    );
    // After --verify, the verified content is what a no-op returns.
    let after = imm
        .fingerprint_with(data.path(), Check::Immutable, false)
        .unwrap();
    assert_eq!(after.digest, truth);
}

#[test]
fn a_file_listing_from_another_run_is_not_trusted_without_a_stat() {
    let (data, cache, c) = scratch();
    tree(data.path());
    c.fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    // Another run's listing (here: an empty one) beside this head.
    let files = fs::read_dir(cache.path().join("fingerprints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".files.json"))
        .unwrap();
    fs::write(&files, b"[]").unwrap();
    fs::write(data.path().join("p1/s1/new.txt"), b"x").unwrap();
    let f = c
        .fingerprint_with(data.path(), Check::Folders, false)
        .unwrap();
    assert_eq!(f.digest, fresh_digest(data.path()));
    assert_eq!((f.files_checked, f.folders_listed), (2001, 111));
}

#[test]
fn large_files_hash_in_blocks_to_the_digest_of_their_bytes() {
    // Two blocks and a remainder: the digest is blake3 of the bytes, whatever the blocks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.u8");
    let bytes: Vec<u8> = (0..(33usize << 20) + 123)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        hash_file(&path, bytes.len() as u64).unwrap(),
        blake3::hash(&bytes).to_hex().to_string()
    );
}
