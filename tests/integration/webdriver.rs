//! A small W3C WebDriver client for the browser test: ChromeDriver (`/usr/bin/chromedriver`,
//! Debian's `chromium-driver`) spawned on a free port in a process group of its own, one
//! headless Chromium session with a throwaway profile, and the few commands the test uses
//! (navigate, find, clear, send keys, click, execute script, screenshot), spoken as JSON over
//! HTTP with the tests' tiny client. Dropping the [`Browser`] ends the session, kills
//! ChromeDriver's process group (Chromium runs in it) and any process still naming the profile
//! directory (Chromium's crash handlers start sessions of their own), passing or failing.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http_client::try_http_sized;

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A headless Chromium driven through ChromeDriver.
pub(crate) struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: Option<String>,
    /// Chromium's profile (`--user-data-dir`) and ChromeDriver's log.
    dir: tempfile::TempDir,
}

/// An element of the current page.
pub(crate) struct Element(String);

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let path = format!("/session/{s}");
            let limit = Duration::from_secs(10);
            let _ = try_http_sized(self.addr, "DELETE", &path, &[], b"", limit);
        }
        // The whole group: ChromeDriver and the Chromium it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        for pid in holders(&self.profile()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Processes whose command line names `profile` (only ever ones this browser started).
fn holders(profile: &Path) -> Vec<u32> {
    let needle = profile.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Decode standard base64 (the screenshot's encoding).
pub(crate) fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (vec![], 0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Browser {
    /// Start ChromeDriver and a headless Chromium session. Fails (never skips) when either is
    /// missing, naming the script that installs them.
    pub(crate) fn start() -> Browser {
        for p in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(p).exists(),
                "{p} is missing: the web page test needs Chromium and ChromeDriver from the \
                 distribution's packages; run scripts/setup-test-services.sh (as root) to \
                 install them"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("hyvideo-browser-")
            .tempdir()
            .unwrap();
        let log = File::create(dir.path().join("chromedriver.log")).unwrap();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {CHROMEDRIVER}: {e}"));
        // The guard exists before anything can fail.
        let mut b = Browser {
            driver,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: None,
            dir,
        };
        std::fs::create_dir(b.profile()).unwrap();
        let t = Instant::now();
        loop {
            let ready = try_http_sized(b.addr, "GET", "/status", &[], b"", COMMAND_LIMIT)
                .ok()
                .filter(|a| a.status == 200)
                .is_some_and(|a| a.json()["value"]["ready"] == true);
            if ready {
                break;
            }
            if let Ok(Some(status)) = b.driver.try_wait() {
                panic!("chromedriver exited ({status}):\n{}", b.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "chromedriver not ready in 60 s:\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Without the background-networking flags Chromium keeps calling out (updates,
        // sync, QUIC probes), which a closed network refuses.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", b.profile().display()),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--window-size=1280,1000".into(),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = b
            .raw("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("new session: {e}\n{}", b.log()));
        b.session = Some(v["sessionId"].as_str().expect("a session id").to_owned());
        b
    }

    fn profile(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    /// ChromeDriver's output, for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver request; its `value`, or the WebDriver error as text.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let headers = [("Content-Type", "application/json; charset=utf-8")];
        let a = try_http_sized(
            self.addr,
            method,
            path,
            &headers,
            body.as_bytes(),
            COMMAND_LIMIT,
        )
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&a.body)
            .map_err(|e| format!("{method} {path}: {e}: {}", a.text()))?;
        if a.status != 200 {
            let e = &v["value"];
            return Err(format!(
                "{method} {path}: {} {}: {}",
                a.status, e["error"], e["message"]
            ));
        }
        Ok(v["value"].clone())
    }

    /// A command of the session (`path` after `/session/{id}`).
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let s = self.session.as_deref().expect("a session");
        self.raw(method, &format!("/session/{s}{path}"), body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({"url": url})));
    }

    /// The first element matching the CSS `selector`.
    pub(crate) fn find(&self, selector: &str) -> Element {
        let body = json!({"using": "css selector", "value": selector});
        let v = self.cmd("POST", "/element", Some(&body));
        Element(
            v[ELEMENT]
                .as_str()
                .expect("an element reference")
                .to_owned(),
        )
    }

    pub(crate) fn clear(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/clear", e.0), Some(&json!({})));
    }

    pub(crate) fn send_keys(&self, e: &Element, text: &str) {
        let body = json!({"text": text});
        self.cmd("POST", &format!("/element/{}/value", e.0), Some(&body));
    }

    /// Clear a text field and type `text` into it.
    pub(crate) fn fill(&self, selector: &str, text: &str) {
        let e = self.find(selector);
        self.clear(&e);
        self.send_keys(&e, text);
    }

    pub(crate) fn click(&self, selector: &str) {
        let e = self.find(selector);
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(&json!({})));
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page; what it returns.
    pub(crate) fn js(&self, script: &str, args: &[Value]) -> Value {
        let body = json!({"script": script, "args": args});
        self.cmd("POST", "/execute/sync", Some(&body))
    }

    /// Run `script` every 100 ms until what it returns has `ok: true`; that value. Panics
    /// after `limit` with `what` and the last value seen.
    pub(crate) fn wait(&self, what: &str, limit: Duration, script: &str) -> Value {
        let t = Instant::now();
        loop {
            let v = self.js(script, &[]);
            if v["ok"] == true {
                return v;
            }
            assert!(
                t.elapsed() < limit,
                "{what}: not within {limit:?}; last seen {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport.
    pub(crate) fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64(v.as_str().expect("base64 text"))
    }
}

#[test]
fn base64_decodes_the_standard_alphabet() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGk/+w=="), [b'h', b'i', 0x3f, 0xfb]);
    assert_eq!(base64(""), b"");
}
