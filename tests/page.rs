//! The status page in a real headless Chromium, driven over the DevTools
//! protocol: it renders every backend, and a click on "drain" drains one.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium and returns its browser-level DevTools URL.
async fn chromium() -> (Browser, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian package `chromium`) must be installed; .ci/run installs it");
    let stderr = tokio::process::ChildStderr::from_std(child.stderr.take().unwrap()).unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("chromium exited without a DevTools URL");
    })
    .await
    .expect("chromium started in time");
    // Keep draining stderr so chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        Browser {
            child,
            _profile: profile,
        },
        url,
    )
}

/// A minimal DevTools client: one page session, commands answered in order.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
}

impl Page {
    async fn open(browser_url: &str, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(browser_url).await.unwrap();
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = page
            .send(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = page
            .send(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        // A desktop-sized viewport, so every column (and its button) is on screen.
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        page
    }

    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("DevTools answered in time")
                .unwrap()
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it yields `want`.
    async fn wait_eval(&mut self, expr: &str, want: Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.eval(expr).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{expr}` is {got}, never {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_backends_and_drains_on_click() {
    if !common::installed("chromium", "chromium") {
        return;
    }
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.web]\nstrategy = \"weighted\"\nbackends = {}\n",
        backends_toml(&[a.addr, b.addr], Some(&[1, 3]))
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    let front = server.local_addr("front").unwrap();
    for _ in 0..8 {
        ask(front).await;
    }

    let (_browser, devtools) = chromium().await;
    let mut page = Page::open(&devtools, &format!("http://{admin}/status")).await;
    let rows = "document.querySelectorAll('section.pool[data-pool=\"web\"] tbody tr').length";
    page.wait_eval(rows, json!(2)).await;
    let state =
        |addr| format!("document.querySelector('tr[data-backend=\"{addr}\"] .state').textContent");
    page.wait_eval(&state(a.addr), json!("up")).await;
    page.wait_eval(&state(b.addr), json!("up")).await;
    let weight = format!(
        "document.querySelector('tr[data-backend=\"{}\"] td:nth-child(3)').textContent",
        b.addr
    );
    assert_eq!(page.eval(&weight).await, json!("3"));
    let share = format!(
        "document.querySelector('tr[data-backend=\"{}\"] .share span').textContent",
        b.addr
    );
    assert_eq!(
        page.eval(&share).await,
        json!("75.0%"),
        "b took 6 of the 8 connections"
    );

    // A real mouse click on a's drain button.
    let rect = page
        .eval(&format!(
            "(() => {{ const r = document.querySelector('tr[data-backend=\"{}\"] button').getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            a.addr
        ))
        .await;
    let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
    for kind in ["mousePressed", "mouseReleased"] {
        page.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
        )
        .await;
    }
    page.wait_eval(&state(a.addr), json!("draining")).await;
    let snap = server.view().pools["web"].snapshot();
    assert!(
        snap.find(a.addr).unwrap().backend.is_draining(),
        "the click reached the API"
    );
    for _ in 0..4 {
        assert_eq!(ask(front).await, "b");
    }

    let shot = page
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png = shot["data"].as_str().unwrap();
    // A PNG of the whole emulated screen (its IHDR chunk gives the size).
    let png = decode_base64(png);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1400, 900), "the screenshot's size");
    if let Ok(path) = std::env::var("SWITCHYARD_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_charts_the_last_hour_and_a_dead_backend_goes_down() {
    if !common::installed("chromium", "chromium") {
        return;
    }
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\nhistory_interval = \"200ms\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.web]\nbackends = {}\n\
         [pools.web.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n",
        backends_toml(&[a.addr, b.addr], None)
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    let front = server.local_addr("front").unwrap();
    // Known traffic: four connections held open, two on each backend.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(front).await.unwrap();
        s.write_all(b"hold\n").await.unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(s);
        r.read_line(&mut line).await.unwrap();
        held.push(r);
    }
    let (_browser, devtools) = chromium().await;
    let mut page = Page::open(&devtools, &format!("http://{admin}/status")).await;
    let last = |sel: String| {
        format!("(() => {{ const c = document.querySelector({sel:?}); return c ? c.dataset.lastActive : null; }})()")
    };
    let row = |addr: std::net::SocketAddr| format!("tr[data-backend=\"{addr}\"] svg.hist");
    // Each chart's last point is what /metrics says now.
    for backend in [a.addr, b.addr] {
        page.wait_eval(&last(row(backend)), json!("2")).await;
        let series =
            format!("switchyard_backend_active_connections{{backend=\"{backend}\",pool=\"web\"}}");
        assert_eq!(value(&server, &series), 2.0);
    }
    page.wait_eval(
        &last("tr[data-listener=\"front\"] svg.hist".into()),
        json!("4"),
    )
    .await;
    assert_eq!(
        value(
            &server,
            "switchyard_listener_active_connections{listener=\"front\"}"
        ),
        4.0
    );
    // Hovering tells the value and the time.
    let at = page
        .eval(&format!(
            "(() => {{ const r = document.querySelector({:?}).getBoundingClientRect(); return [r.right - 2, r.top + 10]; }})()",
            row(a.addr)
        ))
        .await;
    page.call(
        "Input.dispatchMouseEvent",
        json!({ "type": "mouseMoved", "x": at[0], "y": at[1] }),
    )
    .await;
    page.wait_eval("document.getElementById('tip').hidden", json!(false))
        .await;
    let tip = page
        .eval("document.getElementById('tip').textContent")
        .await;
    assert!(tip.as_str().unwrap().contains("open 2"), "{tip}");
    assert!(tip.as_str().unwrap().contains(':'), "a time: {tip}");
    // A backend killed now shows a down band.
    b.stop();
    let down = format!(
        "document.querySelectorAll('tr[data-backend=\"{}\"] svg.hist rect.down').length > 0",
        b.addr
    );
    page.wait_eval(&down, json!(true)).await;
    if let Ok(path) = std::env::var("SWITCHYARD_SCREENSHOT_HISTORY") {
        let shot = page
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        std::fs::write(path, decode_base64(shot["data"].as_str().unwrap())).unwrap();
    }
    let up = format!(
        "document.querySelectorAll('tr[data-backend=\"{}\"] svg.hist rect.down').length",
        a.addr
    );
    assert_eq!(page.eval(&up).await, json!(0));
    drop(held);
    wait_idle(&server, "front").await;
    // With the page still open and polling, the daemon stops at once.
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("an open status page does not hold the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_backends_are_paged_and_the_page_stays_responsive() {
    if !common::installed("chromium", "chromium") {
        return;
    }
    let list: Vec<String> = (0..1000)
        .map(|i| format!("{{ addr = \"127.0.0.3:{}\", name = \"b{i}\" }}", 20_000 + i))
        .collect();
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\nhistory_interval = \"200ms\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"big\"\n\
         [pools.big]\nbackends = [{}]\n",
        list.join(", ")
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    let (_browser, devtools) = chromium().await;
    let started = tokio::time::Instant::now();
    let mut page = Page::open(&devtools, &format!("http://{admin}/status")).await;
    let rows = "document.querySelectorAll('section.pool[data-pool=\"big\"] tbody tr').length";
    page.wait_eval(rows, json!(50)).await;
    // Charts for the rows shown, once the history has a few samples.
    page.wait_eval(
        "document.querySelectorAll('section.pool[data-pool=\"big\"] svg.hist').length",
        json!(50),
    )
    .await;
    let first = "document.querySelector('section.pool[data-pool=\"big\"] tbody tr td').firstChild.textContent";
    assert_eq!(page.eval(first).await, json!("b0"));
    page.eval("document.querySelector('section.pool[data-pool=\"big\"] .pager button:last-child').click()")
        .await;
    page.wait_eval(first, json!("b50")).await;
    page.wait_eval(rows, json!(50)).await;
    // Every answer from the page came quickly: nothing froze it.
    let t = tokio::time::Instant::now();
    assert_eq!(page.eval("1 + 1").await, json!(2));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "the page took {:?} to answer",
        t.elapsed()
    );
    eprintln!(
        "1,000 backends: paged view with charts in {:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_section_links_each_instance_s_page() {
    if !common::installed("chromium", "chromium")
        || !common::installed("etcd", "etcd-server")
        || !common::installed("etcdctl", "etcd-client")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = common::etcd::Etcd::start(&dir.path().join("etcd")).await;
    // A stray key under the prefix is no instance, and hides nothing.
    etcd.ctl(&["put", "/switchyard/instances/stray", "null"])
        .await;
    let a = Backend::start("a").await;
    let ep = etcd.endpoint();
    let conf = |name: &str| {
        format!(
            "[cluster]\nendpoints = [\"{ep}\"]\nname = \"{name}\"\nttl = \"2s\"\n\
             [admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
             [pools.web]\nbackends = {}\n",
            backends_toml(&[a.addr], None)
        )
    };
    let one = start(&conf("one")).await;
    let two = start(&conf("two")).await;
    let (a1, a2) = (
        one.admin_addr().await.unwrap(),
        two.admin_addr().await.unwrap(),
    );
    // Both registered before the page first asks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = tokio::task::spawn_blocking(move || {
            common::daemon::http(a1, "GET", "/api/v1/cluster", &[], "")
        })
        .await
        .unwrap();
        if body.contains("\"name\":\"one\"") && body.contains("\"name\":\"two\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_browser, devtools) = chromium().await;
    let mut page = Page::open(&devtools, &format!("http://{a1}/status")).await;
    let links = "Array.from(document.querySelectorAll('#fleet:not([hidden]) #fleetlist a')).map(l => l.textContent + ' ' + l.getAttribute('href')).sort().join(', ')";
    page.wait_eval(links, json!(format!("one http://{a1}/, two http://{a2}/")))
        .await;
    let text = "document.querySelector('#fleetlist').textContent";
    let shown = page.eval(text).await;
    assert!(shown.as_str().unwrap().contains("web 1/1 up"), "{shown}");
}
