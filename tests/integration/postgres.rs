//! A throwaway PostgreSQL server for the tests of the shared queue: `initdb` into a temporary
//! directory and `pg_ctl start` on a free loopback port (unix socket in the same directory, no
//! system service touched), stopped (`pg_ctl stop -m immediate`) and removed when the guard
//! drops, passing or not. The binaries are Debian's (`/usr/lib/postgresql/N/bin`, installed by
//! `scripts/setup-test-services.sh`); as root the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running throwaway cluster.
pub(crate) struct PgServer {
    bin: PathBuf,
    /// Runs the server's commands as this user (`postgres` when the tests run as root).
    user: Option<String>,
    data: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/N/bin` with `initdb` and `pg_ctl`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((n, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: run ./scripts/setup-test-services.sh \
             (it installs Debian's `postgresql` package)"
        ),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Uid and gid of `user` from /etc/passwd.
fn ids_of(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("no user `{user}` (Debian's postgresql package makes it)"))
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    pub(crate) fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let user = is_root().then(|| "postgres".to_owned());
        if let Some(u) = &user {
            let (uid, gid) = ids_of(u);
            chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = PgServer {
            bin,
            user,
            data: dir.path().join("data"),
            port,
            dir,
        };
        let data = s.data.to_str().unwrap().to_owned();
        check(
            "initdb",
            s.command("initdb")
                .args(["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"])
                .output()
                .unwrap(),
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=50",
            s.dir.path().display()
        );
        let log = s.dir.path().join("server.log");
        check(
            "pg_ctl start",
            s.command("pg_ctl")
                .args(["-D", &data, "-w", "-t", "60", "-o", &options, "-l"])
                .arg(&log)
                .arg("start")
                .output()
                .unwrap(),
        );
        s
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// The URL of a new empty database `name` on this server.
    pub(crate) fn database(&self, name: &str) -> String {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Where the server writes its log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
