//! A small synchronous etcd v3 client over etcd's JSON gateway (`/v3/...`,
//! etcd 3.4 and later), for shared networks (docs/multi-host.md).
//!
//! Plain HTTP through `ureq`: no TLS, no async runtime, no connection pool
//! (each call opens its own connection, so a restarted etcd never leaves a
//! dead pooled socket that would make a write's outcome look unknown). Keys
//! and values are bytes; the gateway carries them base64-encoded, and its
//! 64-bit integers as strings.
//!
//! Every call has a deadline: a connect timeout per endpoint and a total
//! timeout for the whole call, endpoints tried in order (each gets an equal
//! share of the time left, so a silent one cannot starve the others). What happens on a
//! failure depends on whether the request can have been applied:
//!
//! - not connected (refused, unreachable, connect timeout): nothing was sent,
//!   the next endpoint is tried; when none answers, [`Error::Unreachable`];
//! - sent but no answer before the deadline (or the connection broke): a read
//!   or an idempotent write is tried on the next endpoint; a transaction is
//!   not (it may have been applied, and a second try could then lose its
//!   compare to itself): [`Error::Unknown`]. The caller reads back to learn
//!   the outcome;
//! - etcd answered with an error: [`Error::Refused`] (an "unavailable" answer,
//!   e.g. a member without leader, is worth another endpoint for reads).
//!
//! Each error displays as one line naming the endpoint(s) and what failed.

use std::fmt;
use std::io::Read;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Largest answer read from etcd (a range of a whole network's keys fits).
const MAX_ANSWER: u64 = 64 << 20;

/// How long to wait for a connection and for a whole call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Per endpoint: TCP connect.
    pub connect: Duration,
    /// The whole call, all endpoints together.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(500),
            total: Duration::from_secs(2),
        }
    }
}

/// Why a call failed. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No endpoint could be reached: the request was applied nowhere.
    #[error("etcd unreachable for {what}: {detail}")]
    Unreachable { what: String, detail: String },
    /// The request was sent but its answer did not come: it may have been applied.
    #[error(
        "etcd {endpoint}: no answer to {what} within {waited_ms} ms ({detail}); it may have been applied"
    )]
    Unknown {
        endpoint: String,
        what: String,
        waited_ms: u128,
        detail: String,
    },
    /// etcd answered with an error.
    #[error("etcd {endpoint}: {what} refused: {message}")]
    Refused {
        endpoint: String,
        what: String,
        /// gRPC status code (14: unavailable), 0 when the gateway gave none.
        code: i64,
        message: String,
    },
    /// The answer could not be understood.
    #[error("etcd {endpoint}: bad answer to {what}: {detail}")]
    BadAnswer {
        endpoint: String,
        what: String,
        detail: String,
    },
    /// The client was given no usable endpoint.
    #[error("etcd: {0}")]
    Config(String),
}

impl Error {
    /// True when the request was certainly not applied.
    pub fn not_applied(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::Refused { .. } | Error::Config(_)
        )
    }
}

/// One key-value pair as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the key's creation (0: absent, in compares).
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// Number of changes since creation.
    pub version: i64,
    /// Lease the key is attached to (0: none).
    pub lease: i64,
}

/// The answer to a range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The store's revision when the range was read.
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// How many keys are in the range (may exceed `kvs.len()` under a limit).
    pub count: i64,
    /// True when a limit cut the answer short.
    pub more: bool,
}

/// What a compare looks at, and the value it is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// How a compare compares: `key's target <op> given`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One condition of a transaction. With `range_end`, it must hold for every
/// key of `[key, range_end)`; on an empty range, a `Value` compare fails and
/// the others compare with an absent key (all revisions 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub range_end: Option<Vec<u8>>,
    pub op: CmpOp,
    pub target: Target,
}

impl Compare {
    /// `key` does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            range_end: None,
            op: CmpOp::Equal,
            target: Target::Create(0),
        }
    }

    /// `key` was last changed at `revision` (so: it exists and nobody wrote it since).
    pub fn mod_is(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
        Compare {
            key: key.into(),
            range_end: None,
            op: CmpOp::Equal,
            target: Target::Mod(revision),
        }
    }

    /// `key` was created at `revision` (it is that incarnation of the key).
    pub fn created_at(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
        Compare {
            key: key.into(),
            range_end: None,
            op: CmpOp::Equal,
            target: Target::Create(revision),
        }
    }

    /// `key` holds `value`.
    pub fn value_is(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            range_end: None,
            op: CmpOp::Equal,
            target: Target::Value(value.into()),
        }
    }

    /// No key starts with `prefix`.
    pub fn prefix_empty(prefix: impl Into<Vec<u8>>) -> Compare {
        let key = prefix.into();
        Compare {
            range_end: Some(prefix_end(&key)),
            key,
            op: CmpOp::Equal,
            target: Target::Create(0),
        }
    }

    /// No key starting with `prefix` was created or changed after `revision`.
    pub fn prefix_unchanged_since(prefix: impl Into<Vec<u8>>, revision: i64) -> Compare {
        let key = prefix.into();
        Compare {
            range_end: Some(prefix_end(&key)),
            key,
            op: CmpOp::Less,
            target: Target::Mod(revision + 1),
        }
    }

    fn to_json(&self) -> Value {
        let (target, field, value) = match &self.target {
            Target::Version(v) => ("VERSION", "version", json!(v.to_string())),
            Target::Create(v) => ("CREATE", "create_revision", json!(v.to_string())),
            Target::Mod(v) => ("MOD", "mod_revision", json!(v.to_string())),
            Target::Value(v) => ("VALUE", "value", json!(B64.encode(v))),
            Target::Lease(v) => ("LEASE", "lease", json!(v.to_string())),
        };
        let result = match self.op {
            CmpOp::Equal => "EQUAL",
            CmpOp::Greater => "GREATER",
            CmpOp::Less => "LESS",
            CmpOp::NotEqual => "NOT_EQUAL",
        };
        let mut c = json!({
            "key": B64.encode(&self.key),
            "target": target,
            "result": result,
        });
        c[field] = value;
        if let Some(end) = &self.range_end {
            c["range_end"] = json!(B64.encode(end));
        }
        c
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `key`, or `[key, range_end)`.
    Get {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
    },
    /// Write `key` (attached to `lease` unless 0).
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Delete `key`, or `[key, range_end)`.
    Delete {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
    },
}

impl Op {
    pub fn get(key: impl Into<Vec<u8>>) -> Op {
        Op::Get {
            key: key.into(),
            range_end: None,
        }
    }

    pub fn get_prefix(prefix: impl Into<Vec<u8>>) -> Op {
        let key = prefix.into();
        Op::Get {
            range_end: Some(prefix_end(&key)),
            key,
        }
    }

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn put_leased(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            key: key.into(),
            range_end: None,
        }
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Op {
        let key = prefix.into();
        Op::Delete {
            range_end: Some(prefix_end(&key)),
            key,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Op::Get { key, range_end } => json!({ "request_range": range_body(key, range_end) }),
            Op::Put { key, value, lease } => json!({ "request_put": put_body(key, value, *lease) }),
            Op::Delete { key, range_end } => {
                json!({ "request_delete_range": range_body(key, range_end) })
            }
        }
    }
}

/// The result of one operation of a transaction, in the order of the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Range(RangeResult),
    Put,
    /// How many keys were deleted.
    Delete(i64),
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// True when every compare held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    pub results: Vec<OpResult>,
}

/// The end of the range of keys starting with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented; `\0` for "to the end").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn range_body(key: &[u8], range_end: &Option<Vec<u8>>) -> Value {
    let mut r = json!({ "key": B64.encode(key) });
    if let Some(end) = range_end {
        r["range_end"] = json!(B64.encode(end));
    }
    r
}

fn put_body(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut p = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    if lease != 0 {
        p["lease"] = json!(lease.to_string());
    }
    p
}

/// Whether a request may be sent again to another endpoint after it may
/// have reached one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, and writes whose repetition changes nothing that matters.
    Safe,
    /// Transactions: a second try could lose its compare to the first.
    Once,
}

/// How one attempt at one endpoint failed.
enum Attempt {
    /// Nothing was sent.
    NotSent(String),
    /// Sent (or maybe sent); no usable answer.
    Lost(String),
    /// etcd answered with an error.
    Refused { code: i64, message: String },
    /// The answer could not be understood.
    Bad(String),
}

/// An etcd client over a list of endpoints (`http://host:port`), tried in order.
#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    timeouts: Timeouts,
    agent: ureq::Agent,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl Client {
    /// A client of these endpoints (`http://host:port`, a trailing `/` is
    /// dropped). Refuses an empty list and anything but plain `http://`.
    pub fn new<S: AsRef<str>>(endpoints: &[S], timeouts: Timeouts) -> Result<Client, Error> {
        let mut list = Vec::new();
        for e in endpoints {
            let e = e.as_ref().trim().trim_end_matches('/');
            let Some(rest) = e.strip_prefix("http://") else {
                return Err(Error::Config(format!(
                    "endpoint {e:?}: only http://HOST:PORT is supported"
                )));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(Error::Config(format!(
                    "endpoint {e:?}: expected http://HOST:PORT"
                )));
            }
            list.push(e.to_string());
        }
        if list.is_empty() {
            return Err(Error::Config("no endpoint given".into()));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .max_redirects(0)
            .user_agent("netattach")
            .build();
        Ok(Client {
            endpoints: list,
            timeouts,
            agent: config.into(),
        })
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Reads `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let r = self.range(key, None)?;
        Ok(r.kvs.into_iter().next())
    }

    /// Reads every key starting with `prefix`, in key order.
    pub fn get_prefix(&self, prefix: &[u8]) -> Result<RangeResult, Error> {
        self.range(prefix, Some(&prefix_end(prefix)))
    }

    /// Reads `key`, or `[key, range_end)`.
    pub fn range(&self, key: &[u8], range_end: Option<&[u8]>) -> Result<RangeResult, Error> {
        let body = range_body(key, &range_end.map(<[u8]>::to_vec));
        let what = format!("range {}", show_key(key));
        let (endpoint, v) = self.call("/v3/kv/range", &body, Retry::Safe, &what)?;
        parse_range(&v).map_err(|detail| Error::BadAnswer {
            endpoint,
            what,
            detail,
        })
    }

    /// Writes `key` (attached to `lease` unless 0); returns the new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, Error> {
        let what = format!("put {}", show_key(key));
        let (_, v) = self.call(
            "/v3/kv/put",
            &put_body(key, value, lease),
            Retry::Safe,
            &what,
        )?;
        Ok(header_revision(&v))
    }

    /// Deletes `key`, or `[key, range_end)`; returns how many keys went.
    pub fn delete(&self, key: &[u8], range_end: Option<&[u8]>) -> Result<i64, Error> {
        let body = range_body(key, &range_end.map(<[u8]>::to_vec));
        let what = format!("delete {}", show_key(key));
        let (_, v) = self.call("/v3/kv/deleterange", &body, Retry::Safe, &what)?;
        Ok(int(&v["deleted"]))
    }

    /// One transaction: if every compare holds, `success` runs, else `failure`.
    /// Never sent twice: an answer lost on the way is [`Error::Unknown`].
    pub fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, Error> {
        let body = json!({
            "compare": compares.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        });
        let what = match compares.first() {
            Some(c) => format!("txn on {}", show_key(&c.key)),
            None => "txn".to_string(),
        };
        let (endpoint, v) = self.call("/v3/kv/txn", &body, Retry::Once, &what)?;
        parse_txn(&v).map_err(|detail| Error::BadAnswer {
            endpoint,
            what,
            detail,
        })
    }

    /// A new lease of `ttl` seconds; returns its id and granted TTL.
    pub fn lease_grant(&self, ttl: i64) -> Result<(i64, i64), Error> {
        let what = format!("lease grant ({ttl} s)");
        let body = json!({ "TTL": ttl.to_string() });
        // A lost answer may leave an unused lease behind: it expires by itself.
        let (endpoint, v) = self.call("/v3/lease/grant", &body, Retry::Safe, &what)?;
        let id = int(&v["ID"]);
        if id == 0 {
            let err = v["error"].as_str().unwrap_or("no lease id").to_string();
            return Err(Error::BadAnswer {
                endpoint,
                what,
                detail: err,
            });
        }
        Ok((id, int(&v["TTL"])))
    }

    /// Renews a lease; returns its TTL again, or `None` when it is gone
    /// (expired or revoked).
    pub fn lease_keepalive(&self, id: i64) -> Result<Option<i64>, Error> {
        let what = format!("lease keepalive {id:x}");
        let body = json!({ "ID": id.to_string() });
        let (_, v) = self.call("/v3/lease/keepalive", &body, Retry::Safe, &what)?;
        let ttl = int(&v["result"]["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Ends a lease now, deleting the keys attached to it.
    pub fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let what = format!("lease revoke {id:x}");
        let body = json!({ "ID": id.to_string() });
        match self.call("/v3/lease/revoke", &body, Retry::Safe, &what) {
            Ok(_) => Ok(()),
            // Already gone: what was asked holds.
            Err(Error::Refused { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends `body` to `path` on each endpoint in turn until one answers,
    /// within the total deadline. Returns the endpoint that answered and its
    /// answer.
    fn call(
        &self,
        path: &str,
        body: &Value,
        retry: Retry,
        what: &str,
    ) -> Result<(String, Value), Error> {
        let start = Instant::now();
        let deadline = start + self.timeouts.total;
        let body = body.to_string();
        let mut failures: Vec<String> = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                failures.push(format!("{endpoint}: not tried, deadline reached"));
                continue;
            }
            // A silent endpoint must not eat the time of the ones after it:
            // each gets an equal share of what is left (the last gets it all).
            let untried = (self.endpoints.len() - i) as u32;
            let left = (deadline - now) / untried;
            match self.attempt(endpoint, path, &body, left) {
                Ok(v) => return Ok((endpoint.clone(), v)),
                Err(Attempt::NotSent(why)) => failures.push(format!("{endpoint}: {why}")),
                Err(Attempt::Lost(why)) => {
                    if retry == Retry::Once {
                        return Err(Error::Unknown {
                            endpoint: endpoint.clone(),
                            what: what.to_string(),
                            waited_ms: start.elapsed().as_millis(),
                            detail: why,
                        });
                    }
                    failures.push(format!("{endpoint}: {why}"));
                }
                Err(Attempt::Refused { code, message }) => {
                    // Unavailable (a member without leader, a stopping server):
                    // a read may ask another member; anything else is etcd's word.
                    if code == 14 && retry == Retry::Safe {
                        failures.push(format!("{endpoint}: {message}"));
                        continue;
                    }
                    return Err(Error::Refused {
                        endpoint: endpoint.clone(),
                        what: what.to_string(),
                        code,
                        message,
                    });
                }
                Err(Attempt::Bad(detail)) => {
                    return Err(Error::BadAnswer {
                        endpoint: endpoint.clone(),
                        what: what.to_string(),
                        detail,
                    })
                }
            }
        }
        Err(Error::Unreachable {
            what: what.to_string(),
            detail: format!(
                "{} (after {} ms)",
                failures.join("; "),
                start.elapsed().as_millis()
            ),
        })
    }

    fn attempt(
        &self,
        endpoint: &str,
        path: &str,
        body: &str,
        left: Duration,
    ) -> Result<Value, Attempt> {
        let connect = self.timeouts.connect.min(left);
        let response = self
            .agent
            .post(format!("{endpoint}{path}"))
            .header("content-type", "application/json")
            .config()
            .timeout_global(Some(left))
            .timeout_connect(Some(connect))
            .build()
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Err(classify(e, connect, left)),
        };
        let status = response.status().as_u16();
        let mut text = String::new();
        if let Err(e) = response
            .body_mut()
            .as_reader()
            .take(MAX_ANSWER)
            .read_to_string(&mut text)
        {
            return Err(Attempt::Lost(format!("reading the answer: {e}")));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Attempt::Bad(format!(
                "HTTP {status}, not JSON ({e}): {}",
                one_line(&text, 120)
            ))
        })?;
        if !(200..300).contains(&status) || v.get("error").is_some() && v.get("header").is_none() {
            let message = v["message"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .map(|m| one_line(m, 200))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(Attempt::Refused {
                code: int(&v["code"]),
                message,
            });
        }
        Ok(v)
    }
}

/// Sorts a transport failure into "nothing was sent" and "maybe sent".
fn classify(e: ureq::Error, connect: Duration, left: Duration) -> Attempt {
    use std::io::ErrorKind as K;
    use ureq::Timeout as T;
    match e {
        ureq::Error::Timeout(T::Connect | T::Resolve) => Attempt::NotSent(format!(
            "connect timed out after {} ms",
            connect.as_millis()
        )),
        ureq::Error::Timeout(_) => {
            Attempt::Lost(format!("timed out after {} ms", left.as_millis()))
        }
        ureq::Error::HostNotFound => Attempt::NotSent("host not found".into()),
        ureq::Error::ConnectionFailed => Attempt::NotSent("connection failed".into()),
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused
            | K::AddrNotAvailable
            | K::NetworkUnreachable
            | K::HostUnreachable
            | K::NotFound => Attempt::NotSent(one_line(&io.to_string(), 120)),
            _ => Attempt::Lost(one_line(&io.to_string(), 120)),
        },
        ureq::Error::BadUri(u) => Attempt::NotSent(format!("bad address {u}")),
        other => Attempt::Lost(one_line(&other.to_string(), 120)),
    }
}

/// A key for messages: text when printable, else base64.
fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => format!("base64:{}", B64.encode(key)),
    }
}

/// `s` on one line, cut at `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat.to_string(),
    }
}

/// A protobuf int64 as the gateway writes it (a string), or a number; 0 when absent.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|e| format!("{field}: {e}")),
        Some(other) => Err(format!("{field}: not a string: {other}")),
    }
}

fn header_revision(v: &Value) -> i64 {
    int(&v["header"]["revision"])
}

fn parse_kv(v: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: bytes(v, "key")?,
        value: bytes(v, "value")?,
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        version: int(&v["version"]),
        lease: int(&v["lease"]),
    })
}

fn parse_range(v: &Value) -> Result<RangeResult, String> {
    let kvs = match v.get("kvs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(parse_kv).collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("kvs: not a list: {other}")),
    };
    Ok(RangeResult {
        revision: header_revision(v),
        count: int(&v["count"]),
        more: v["more"].as_bool().unwrap_or(false),
        kvs,
    })
}

fn parse_txn(v: &Value) -> Result<TxnResult, String> {
    let mut results = Vec::new();
    if let Some(list) = v.get("responses").and_then(Value::as_array) {
        for r in list {
            if let Some(range) = r.get("response_range") {
                results.push(OpResult::Range(parse_range(range)?));
            } else if r.get("response_put").is_some() {
                results.push(OpResult::Put);
            } else if let Some(d) = r.get("response_delete_range") {
                results.push(OpResult::Delete(int(&d["deleted"])));
            } else {
                return Err(format!("unknown response {}", one_line(&r.to_string(), 80)));
            }
        }
    }
    Ok(TxnResult {
        succeeded: v["succeeded"].as_bool().unwrap_or(false),
        revision: header_revision(v),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn compares_encode_like_the_gateway_expects() {
        let c = Compare::absent("k").to_json();
        assert_eq!(
            c,
            json!({"key": "aw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
        );
        let c = Compare::prefix_unchanged_since("p/", 7).to_json();
        assert_eq!(c["target"], "MOD");
        assert_eq!(c["result"], "LESS");
        assert_eq!(c["mod_revision"], "8");
        assert_eq!(c["range_end"], B64.encode("p0"));
        let c = Compare::value_is("k", "v").to_json();
        assert_eq!(c["value"], B64.encode("v"));
    }

    #[test]
    fn answers_parse_with_defaults_omitted() {
        let v = json!({"header": {"revision": "5"}, "kvs": [{"key": "aw==", "create_revision": "2", "mod_revision": "5", "version": "3"}], "count": "1"});
        let r = parse_range(&v).unwrap();
        assert_eq!(r.revision, 5);
        assert_eq!(r.kvs[0].key, b"k");
        assert!(r.kvs[0].value.is_empty());
        assert_eq!(r.kvs[0].lease, 0);
        let t = parse_txn(&json!({"header": {"revision": "9"}})).unwrap();
        assert!(!t.succeeded);
        assert!(t.results.is_empty());
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(Client::new::<&str>(&[], Timeouts::default()).is_err());
        assert!(Client::new(&["https://x:1"], Timeouts::default()).is_err());
        assert!(Client::new(&["http://x:1/v3"], Timeouts::default()).is_err());
        let c = Client::new(&["http://127.0.0.1:2379/"], Timeouts::default()).unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn messages_stay_on_one_line() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc...");
        assert_eq!(show_key(b"a/b"), "a/b");
        assert_eq!(show_key(b"\x01"), "base64:AQ==");
    }
}
