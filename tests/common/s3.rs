//! A real S3-compatible server (`moto_server`) on a random port, and a TCP proxy
//! in front of it that fails the first few uploads, as a throttling S3 does.
//!
//! moto keeps everything in memory and checks no signatures: point object_store
//! at [`S3Server::endpoint`] (or [`FaultProxy::endpoint`]) with any access key and
//! secret, region `us-east-1`, and `allow_http`. Two moto quirks the helpers
//! below work around:
//! - an existing object is 403 to a request without an `Authorization` header, so
//!   they send a well-formed dummy one (a malformed one is a 500);
//! - a body sent as `application/x-www-form-urlencoded` (curl's default) is
//!   parsed as a form and the object is stored empty.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Any well-formed SigV4 header: moto wants one, but checks nothing in it (a
/// region other than us-east-1 would make bucket creation need a location).
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                    SignedHeaders=host, Signature=00";

/// A `moto_server` process; killed on drop. Every connection to it carries a
/// single request: moto answers each with `Connection: close`.
pub struct S3Server {
    child: Child,
    pub port: u16,
    http: reqwest::Client,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let port = super::free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (pip install \"moto[server]\")");
        let server = S3Server {
            child,
            port,
            http: reqwest::Client::new(),
        };
        // Python takes a second or so to import moto before it listens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let last = match server.http.get(server.endpoint()).send().await {
                Ok(r) if r.status().is_success() => return server,
                Ok(r) => r.status().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server did not start: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `/{bucket}/{key}`, each part percent-encoded.
    fn url(&self, bucket: &str, key: &str) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&self.endpoint()).unwrap();
        let mut path = url.path_segments_mut().unwrap();
        path.pop_if_empty().push(bucket);
        if !key.is_empty() {
            path.extend(key.split('/'));
        }
        drop(path);
        url
    }

    pub async fn create_bucket(&self, name: &str) {
        let resp = self
            .http
            .put(self.url(name, ""))
            .header("Authorization", AUTH)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status.is_success(),
            "create bucket {name}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// The object's bytes, or None if there is no such object.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let resp = self
            .http
            .get(self.url(bucket, key))
            .header("Authorization", AUTH)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let body = resp.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "get {bucket}/{key}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Some(body.to_vec())
    }

    /// The keys under `prefix` (ListObjectsV2), in key order; at most 1000.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut url = self.url(bucket, "");
        url.query_pairs_mut()
            .append_pair("list-type", "2")
            .append_pair("prefix", prefix);
        let resp = self
            .http
            .get(url)
            .header("Authorization", AUTH)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let xml = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "list {bucket}/{prefix}: {status} {xml}"
        );
        assert!(
            !xml.contains("<IsTruncated>true</IsTruncated>"),
            "list {bucket}/{prefix}: more than one page"
        );
        xml.split("<Key>")
            .skip(1)
            .map(|s| unescape(s.split_once("</Key>").unwrap().0))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto escapes keys in XML (`a&b` is listed as `a&amp;b`).
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

const SLOW_DOWN: &str = "<Error><Code>SlowDown</Code><Message>injected</Message></Error>";

/// Forwards TCP connections to an S3 server, except that the first `fail_puts`
/// PUT or POST requests (uploads, multipart create/complete — and bucket
/// creation, so create buckets on the server directly) are read in full and
/// answered `503 SlowDown` with `Connection: close`. Only a connection's first
/// request is looked at: a proxied one stays proxied to the end.
pub struct FaultProxy {
    pub addr: SocketAddr,
    injected: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, fail_puts: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Arc::new(AtomicUsize::new(fail_puts));
        let injected = Arc::new(AtomicUsize::new(0));
        let counter = injected.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task, which aborts every connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (budget, counter) = (budget.clone(), counter.clone());
                conns.spawn(async move {
                    let _ = serve(inbound, upstream, &budget, &counter).await;
                });
            }
        });
        FaultProxy {
            addr,
            injected,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests were failed so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    budget: &AtomicUsize,
    injected: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(&mut inbound, &mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let upload = head.starts_with("PUT ") || head.starts_with("POST ");
    if upload
        && budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        // Read the whole body first: a response cut into an upload still being
        // sent is a connection error to the client, not a 503.
        read_body(&mut inbound, &mut buf, head_len, &head).await?;
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{SLOW_DOWN}",
            SLOW_DOWN.len()
        );
        inbound.write_all(resp.as_bytes()).await?;
        injected.fetch_add(1, Ordering::SeqCst);
        return inbound.shutdown().await;
    }
    let mut outbound = TcpStream::connect(upstream).await?;
    outbound.write_all(&buf).await?;
    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
    Ok(())
}

/// Reads until `buf` holds the whole body after the head: `Content-Length`
/// bytes, or chunks up to the last (object_store sends a length, but be safe).
async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_len: usize,
    head: &str,
) -> std::io::Result<()> {
    let chunked = header(head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        let len: usize = header(head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + len {
            fill(s, buf).await?;
        }
        return Ok(());
    }
    let mut pos = head_len;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            fill(s, buf).await?;
            continue;
        };
        let size = {
            let line = String::from_utf8_lossy(&buf[pos..pos + eol]);
            usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?
        };
        if size == 0 {
            // Trailers, usually none, end with an empty line.
            while find(&buf[pos..], b"\r\n\r\n").is_none() {
                fill(s, buf).await?;
            }
            return Ok(());
        }
        pos += eol + 2 + size + 2;
        while buf.len() < pos {
            fill(s, buf).await?;
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Appends what the socket has next to `buf`; the peer closing is an error here.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}
