//! Local delivery into Maildir folders (the maildir(5) layout of qmail, as Dovecot and Postfix
//! read it): the message is written to `tmp/` under a unique name, flushed to disk, then renamed
//! into `new/`, so a reader never sees a partial file and an acknowledged delivery survives a
//! crash. File I/O goes through glommio so the core is never blocked on the disk.

use std::cell::{Cell, OnceCell};
use std::io;
use std::path::{Path, PathBuf};

use futures_lite::AsyncWriteExt;
use glommio::io::{BufferedFile, Directory, OpenOptions, StreamWriterBuilder};

use crate::envelope::Envelope;

/// Content goes to disk in writes of at most this size.
const WRITE_CHUNK: usize = 1024 * 1024;

/// Attempts at finding a free name in `tmp/` before giving up.
const NAME_ATTEMPTS: usize = 8;

thread_local! {
    static DELIVERY_COUNTER: Cell<u64> = const { Cell::new(0) };
    static HOST_PART: OnceCell<String> = const { OnceCell::new() };
}

/// Delivers `body` (CRLF text) for `recipient` into the Maildir `<maildir_root>/<folder>/`,
/// where the folder is named after the recipient's local part (see [`folder_name`]). The file
/// starts with `Return-Path` and `Delivered-To`; line ends are stored as LF, as Maildir readers
/// expect. Returns the path of the file in `new/`.
pub async fn deliver(
    maildir_root: &Path,
    recipient: &str,
    envelope: &Envelope,
    body: &[u8],
) -> io::Result<PathBuf> {
    let maildir = maildir_root.join(folder_name(recipient));
    ensure_maildir(&maildir).await?;

    let header = format!(
        "Return-Path: <{}>\nDelivered-To: {}\n",
        one_line(&envelope.reverse_path),
        one_line(recipient)
    );
    let (name, file) = create_unique(&maildir.join("tmp")).await?;
    let tmp = maildir.join("tmp").join(&name);
    if let Err(error) = write_message(file, &tmp, header.as_bytes(), body).await {
        let _ = glommio::io::remove(&tmp).await;
        return Err(error);
    }

    let new = maildir.join("new").join(&name);
    glommio::io::rename(&tmp, &new)
        .await
        .map_err(|e| context(e.into(), "renaming into new/", &tmp))?;
    sync_directory(&maildir.join("new")).await?;

    tracing::debug!(
        recipient,
        path = %new.display(),
        size = body.len(),
        "maildir delivery done"
    );
    Ok(new)
}

/// The Maildir folder for a recipient: its local part lowercased, every character other than
/// `a-z 0-9 . _ + -` replaced by `_`, and a leading `.` replaced too, so the name can never
/// climb out of the root or hide as a dot file.
pub fn folder_name(recipient: &str) -> String {
    let local = recipient
        .rsplit_once('@')
        .map_or(recipient, |(local, _)| local);
    let mut name: String = local
        .to_lowercase()
        .chars()
        .map(|ch| match ch {
            'a'..='z' | '0'..='9' | '.' | '_' | '+' | '-' => ch,
            _ => '_',
        })
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// A name unique on this host: `seconds.MmicrosPpid_core_counter.host` (maildir(5)).
fn unique_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let counter = DELIVERY_COUNTER.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let core = glommio::executor().id();
    let host = HOST_PART.with(|h| h.get_or_init(host_part).clone());
    format!(
        "{}.M{}P{}_{core}_{counter}.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

/// The host name as maildir(5) wants it in file names: `/` and `:` written as octal escapes.
fn host_part() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "localhost" } else { host };
    host.replace('/', "\\057").replace(':', "\\072")
}

/// Creates the folder with `tmp`, `new` and `cur` unless `new` already exists, flushing each
/// parent directory that gained an entry.
async fn ensure_maildir(maildir: &Path) -> io::Result<()> {
    if maildir.join("new").is_dir() && maildir.join("tmp").is_dir() {
        return Ok(());
    }
    if let Some(root) = maildir.parent()
        && !root.is_dir()
    {
        std::fs::create_dir_all(root).map_err(|e| context(e, "creating", root))?;
    }
    if create_directory(maildir)? {
        sync_directory(maildir.parent().unwrap_or(Path::new("/"))).await?;
    }
    let mut created = false;
    for sub in ["tmp", "new", "cur"] {
        created |= create_directory(&maildir.join(sub))?;
    }
    if created {
        sync_directory(maildir).await?;
    }
    Ok(())
}

/// Creates one directory; `false` when it was already there.
fn create_directory(path: &Path) -> io::Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(error) => Err(context(error, "creating", path)),
    }
}

/// Creates a new file in `tmp/` and returns its name with the open file.
async fn create_unique(tmp_dir: &Path) -> io::Result<(String, BufferedFile)> {
    let mut last_error = None;
    for _ in 0..NAME_ATTEMPTS {
        let name = unique_name();
        let path = tmp_dir.join(&name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .buffered_open(&path)
            .await
        {
            Ok(file) => return Ok((name, file)),
            Err(error) => {
                let error = io::Error::from(error);
                if error.kind() != io::ErrorKind::AlreadyExists {
                    return Err(context(error, "creating", &path));
                }
                last_error = Some(context(error, "creating", &path));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free name in tmp/")))
}

/// Writes the header and the body with CRLF turned into LF, then flushes the file to disk and
/// closes it.
async fn write_message(
    file: BufferedFile,
    path: &Path,
    header: &[u8],
    body: &[u8],
) -> io::Result<()> {
    let mut writer = StreamWriterBuilder::new(file)
        .with_buffer_size(WRITE_CHUNK)
        .build();
    let failed = |e| context(e, "writing", path);
    writer.write_all(header).await.map_err(failed)?;
    let mut converted = Vec::with_capacity(body.len().min(WRITE_CHUNK) + 1);
    let mut pending_cr = false;
    for chunk in body.chunks(WRITE_CHUNK) {
        converted.clear();
        crlf_to_lf(chunk, &mut pending_cr, &mut converted);
        writer.write_all(&converted).await.map_err(failed)?;
    }
    if pending_cr {
        writer.write_all(b"\r").await.map_err(failed)?;
    }
    if !body.is_empty() && !body.ends_with(b"\n") {
        writer.write_all(b"\n").await.map_err(failed)?;
    }
    writer
        .close()
        .await
        .map_err(|e| context(e, "flushing", path))
}

/// Appends `chunk` with each CRLF written as LF. A CR that ends the chunk waits in
/// `pending_cr` for the next chunk to tell whether an LF follows it.
fn crlf_to_lf(chunk: &[u8], pending_cr: &mut bool, out: &mut Vec<u8>) {
    if std::mem::take(pending_cr) && chunk.first() != Some(&b'\n') {
        out.push(b'\r');
    }
    let mut lines = chunk.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_some() {
            out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            out.push(b'\n');
        } else if let Some(line) = line.strip_suffix(b"\r") {
            out.extend_from_slice(line);
            *pending_cr = true;
        } else {
            out.extend_from_slice(line);
        }
    }
}

/// Replaces control characters, so that a header value stays on its line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

async fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = Directory::open(path)
        .await
        .map_err(|e| context(e.into(), "opening", path))?;
    directory
        .sync()
        .await
        .map_err(|e| context(e.into(), "flushing", path))?;
    directory
        .close()
        .await
        .map_err(|e| context(e.into(), "closing", path))
}

/// Puts the action and the path in front of an error, for the operator.
fn context(error: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("maildir: {action} {}: {error}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let unique = rand::random::<u64>();
            let path = std::env::temp_dir().join(format!(
                "secmx-maildir-{name}-{}-{unique:x}",
                std::process::id()
            ));
            Root(path)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn envelope(reverse_path: &str) -> Envelope {
        Envelope {
            reverse_path: reverse_path.to_string(),
            recipients: vec!["bob@localhost".to_string()],
            received_at: 0,
            peer: "127.0.0.1".to_string(),
            helo: "client.test.example".to_string(),
            tls: "none".to_string(),
        }
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(future)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn message_lands_in_new_with_return_path_and_delivered_to_and_lf_line_ends() {
        let root = Root::new("deliver");
        let body = b"Subject: hi\r\n\r\nline one\r\nline two";
        let path = run(deliver(
            &root.0,
            "Bob@Localhost",
            &envelope("alice@example.net"),
            body,
        ))
        .unwrap();

        let maildir = root.0.join("bob");
        assert_eq!(path.parent().unwrap(), maildir.join("new"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "Return-Path: <alice@example.net>\nDelivered-To: Bob@Localhost\n\
             Subject: hi\n\nline one\nline two\n"
        );
        assert!(
            entries(&maildir.join("tmp")).is_empty(),
            "nothing left in tmp/"
        );
        assert!(maildir.join("cur").is_dir());

        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.splitn(3, '.').collect();
        assert!(parts[0].parse::<u64>().is_ok(), "{name}");
        assert!(
            parts[1].contains(&format!("P{}_", std::process::id())),
            "{name}"
        );
        assert!(!parts[2].is_empty() && !parts[2].contains('/'), "{name}");
    }

    #[test]
    fn null_reverse_path_and_line_breaks_in_addresses_stay_on_their_header_line() {
        let root = Root::new("null");
        let path = run(deliver(
            &root.0,
            "bob\r\nX-Evil: 1@x",
            &envelope(""),
            b"x\r\n",
        ))
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "Return-Path: <>\nDelivered-To: bob  X-Evil: 1@x\nx\n");
        assert!(root.0.join("bob__x-evil__1").join("new").is_dir());
    }

    #[test]
    fn every_delivery_gets_its_own_file() {
        let root = Root::new("many");
        let paths = run(async {
            let mut paths = Vec::new();
            for i in 0..50 {
                let body = format!("Subject: {i}\r\n\r\n");
                let envelope = envelope("a@b");
                let path = deliver(&root.0, "bob@x", &envelope, body.as_bytes()).await;
                paths.push(path.unwrap());
            }
            paths
        });
        assert_eq!(entries(&root.0.join("bob").join("new")).len(), 50);
        for (i, path) in paths.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.ends_with(&format!("Subject: {i}\n\n")), "{text}");
        }
    }

    #[test]
    fn crlf_split_across_write_chunks_still_becomes_lf() {
        let mut pending_cr = false;
        let mut out = Vec::new();
        crlf_to_lf(b"a\r", &mut pending_cr, &mut out);
        crlf_to_lf(b"\nb\r", &mut pending_cr, &mut out);
        crlf_to_lf(b"c\r\n", &mut pending_cr, &mut out);
        assert_eq!(out, b"a\nb\rc\n");
        assert!(!pending_cr);
    }

    #[test]
    fn folder_names_cannot_escape_the_root_or_hide() {
        assert_eq!(folder_name("Bob.Smith+tag@Example.org"), "bob.smith+tag");
        assert_eq!(folder_name(r#""a b"@example.org"#), "_a_b_");
        assert_eq!(folder_name(".hidden@example.org"), "_hidden");
        assert_eq!(folder_name("../../etc@example.org"), "_._.._etc");
        assert_eq!(folder_name("postmaster"), "postmaster");
        assert_eq!(folder_name("@example.org"), "_");
        assert_eq!(folder_name("Jörg@example.org"), "j_rg");
    }

    #[test]
    fn unusable_root_gives_an_error_naming_the_path() {
        let root = Root::new("blocked");
        std::fs::write(&root.0, b"a file, not a directory").unwrap();
        let error = run(deliver(&root.0, "bob@x", &envelope("a@b"), b"x\r\n")).unwrap_err();
        assert!(
            error.to_string().contains(&*root.0.to_string_lossy()),
            "{error}"
        );
        std::fs::remove_file(&root.0).unwrap();
    }
}
