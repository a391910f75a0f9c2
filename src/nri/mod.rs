//! The NRI face: `netattach nri`, a plugin for containerd 1.7+/2.x and CRI-O
//! through the Node Resource Interface (SPEC §6; wire facts in
//! NRI-PROTOCOL.md). It attaches a pod's requested networks when its sandbox
//! starts and releases them when it is removed.
//!
//! Layers, one module each, bottom up:
//!
//! - [`proto`]: bindings of our own `.proto` subset of the NRI API and of the
//!   ttrpc envelope, generated at build time (protobuf-codegen, pure Rust).
//! - [`mux`]: the frame multiplexer (conn 1: Plugin service, conn 2: Runtime
//!   service) and the framing rules toward the runtime's Go reader.
//! - [`ttrpc`]: the ttrpc message header and request/response envelopes.
//! - [`session`]: one connection: demultiplexing, serving, calling.
//! - [`plugin`]: what each NRI request does (attach, release, reconcile).
//! - [`owners`]: which lease owners this runtime's plugin attached.
//! - [`run`]: registration, the two ways to run, reconnection.
//! - [`upkeep`]: the etcd thread of shared networks (heartbeats).
//! - [`links`]: repair when a network's parent comes back.
//! - [`settings`], [`log`]: identity, plugin config file, timestamped log.
//!
//! Design: synchronous, threads, no async runtime. The plugin serves one
//! connection whose requests a runtime sends one at a time, and each request
//! ends in blocking work (netlink in another netns via a thread, SQLite), so
//! threads are the natural fit: one reader thread per connection, one short
//! thread per request, a blocking call for `RegisterPlugin`. The `ttrpc`
//! crate was not used: its synchronous API takes only raw fds and its servers
//! only listening sockets, while here one socket carries a ttrpc server and a
//! ttrpc client at once behind the multiplexer; its async API would bring
//! tokio and still need a frame rewriter toward the Go reader. Unary ttrpc is
//! a 10-byte header and two protobuf messages, so the wire is done here, with
//! the message bodies from the generated bindings. This also keeps the hook
//! path (and every other face) free of any async runtime.

pub mod links;
pub mod log;
pub mod mux;
pub mod owners;
pub mod plugin;
pub mod proto;
pub mod run;
pub mod session;
pub mod settings;
pub mod ttrpc;
pub mod turns;
pub mod upkeep;
