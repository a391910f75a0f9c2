//! DHCPv4 client state machine (RFC 2131 §4.4, figure 5): INIT, SELECTING,
//! REQUESTING, BOUND, RENEWING, REBINDING, plus FINISHED once it has nothing
//! left to do.
//!
//! It does no I/O and reads no clock: the caller passes `now` (a monotonic
//! [`Duration`] since any fixed origin) with every event and performs the
//! returned [`Action`]s. That keeps every retransmit and lease timer a plain
//! value, so the whole protocol is unit-tested without sockets or sleeping,
//! and the message layer (`dhcproto` encoding, sockets) stays separate.
//!
//! Acquisition retransmits every second until a short deadline, because a
//! container start cannot wait for RFC's 4/8/16 s backoff. The machine never
//! loops back to INIT on its own once a lease is gone ([`Action::Lost`]) or
//! acquisition gave up ([`Action::Failed`]): it becomes
//! [`State::Finished`] and the caller decides whether to call
//! [`Client::acquire`] again.

use std::net::Ipv4Addr;
use std::time::Duration;

const RETRANSMIT: Duration = Duration::from_secs(1);
/// RFC 2131 §4.4.5: don't retransmit a renewal more often than this.
const MIN_RENEW_WAIT: Duration = Duration::from_secs(60);

/// What the server granted (from an OFFER or ACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// yiaddr.
    pub address: Ipv4Addr,
    /// Server identifier, option 54.
    pub server: Ipv4Addr,
    /// From the subnet mask, option 1; filled in by the message layer.
    pub prefix_len: u8,
    /// First router, option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 51; the message layer maps "infinite" to a very long duration.
    pub lease_time: Duration,
    /// T1, option 58.
    pub renewal_time: Option<Duration>,
    /// T2, option 59.
    pub rebinding_time: Option<Duration>,
}

/// A decoded server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer { xid: u32, offer: Offer },
    Ack { xid: u32, offer: Offer },
    Nak { xid: u32, server: Ipv4Addr },
}

/// What to send; the message layer adds client id, hostname, MAC, parameter
/// list and the broadcast flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Discover {
        xid: u32,
    },
    Request {
        xid: u32,
        kind: RequestKind,
    },
    Release {
        xid: u32,
        address: Ipv4Addr,
        server: Ipv4Addr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Options 50 + 54, ciaddr 0, broadcast.
    Selecting {
        requested: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// ciaddr set, no 50/54, unicast to the server.
    Renewing { ciaddr: Ipv4Addr },
    /// ciaddr set, no 50/54, broadcast.
    Rebinding { ciaddr: Ipv4Addr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Unicast(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Message, Destination),
    /// First ACK: configure the interface.
    Bound(Lease),
    /// ACK while renewing/rebinding, same address: update the persisted lease.
    Renewed(Lease),
    /// Expired, NAKed, or re-ACKed with another address: remove the address.
    Lost(Lease),
    /// Acquisition gave up; one line for the user.
    Failed(String),
}

/// A bound lease; all times are absolute, on the caller's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub offer: Offer,
    /// `now` of the ACK.
    pub bound_at: Duration,
    pub t1: Duration,
    pub t2: Duration,
    pub expiry: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Transient: the machine leaves it within the same call.
    Init,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
    Finished,
}

impl Lease {
    /// The lease an ACK received at `now` grants. T1/T2 default per RFC 2131
    /// §4.4.5 (0.5 and 0.875 of the lease) and are clamped to
    /// T1 <= T2 <= lease so a server's nonsense cannot schedule a renewal
    /// after expiry.
    pub fn new(offer: Offer, now: Duration) -> Lease {
        let lease = offer.lease_time;
        let t2 = offer.rebinding_time.unwrap_or(lease - lease / 8).min(lease);
        let t1 = offer.renewal_time.unwrap_or(lease / 2).min(t2);
        Lease {
            bound_at: now,
            t1: now.saturating_add(t1),
            t2: now.saturating_add(t2),
            expiry: now.saturating_add(lease),
            offer,
        }
    }

    /// Persisted leases are pub data; restore the ordering `new` guarantees.
    fn normalized(mut self) -> Lease {
        self.t2 = self.t2.min(self.expiry);
        self.t1 = self.t1.min(self.t2);
        self
    }

    /// The state this lease calls for at `now`; `Finished` means expired.
    fn phase(&self, now: Duration) -> State {
        match now {
            n if n >= self.expiry => State::Finished,
            n if n >= self.t2 => State::Rebinding,
            n if n >= self.t1 => State::Renewing,
            _ => State::Bound,
        }
    }
}

impl Reply {
    fn xid(&self) -> u32 {
        match self {
            Reply::Offer { xid, .. } | Reply::Ack { xid, .. } | Reply::Nak { xid, .. } => *xid,
        }
    }
}

/// One DHCP client for one interface; see the module docs.
#[derive(Debug)]
pub struct Client {
    state: State,
    xid: u32,
    xid_source: u32,
    timer: Option<Duration>,
    give_up_at: Duration,
    give_up_after: Duration,
    selected: Option<Offer>,
    lease: Option<Lease>,
    /// A NAK explains a failed acquisition better than the timeout does.
    refused_by: Option<Ipv4Addr>,
}

impl Client {
    fn new(xid_seed: u32, give_up_at: Duration, give_up_after: Duration) -> Client {
        Client {
            state: State::Init,
            xid: 0,
            xid_source: xid_seed,
            timer: None,
            give_up_at,
            give_up_after,
            selected: None,
            lease: None,
            refused_by: None,
        }
    }

    /// Starts acquiring: sends DISCOVER now; gives up `deadline` after `now`.
    pub fn acquire(now: Duration, xid_seed: u32, deadline: Duration) -> (Client, Vec<Action>) {
        let mut client = Client::new(xid_seed, now.saturating_add(deadline), deadline);
        let actions = client.start_selecting(now);
        (client, actions)
    }

    /// Resumes a lease persisted before a restart. An already expired lease
    /// yields `Lost` and a finished client.
    pub fn restore(now: Duration, lease: Lease, xid_seed: u32) -> (Client, Vec<Action>) {
        let mut client = Client::new(xid_seed, Duration::ZERO, Duration::ZERO);
        client.lease = Some(lease.normalized());
        let actions = client.follow_lease(now);
        (client, actions)
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// When to call [`Client::on_timer`] next; `None` once finished.
    pub fn next_timer(&self) -> Option<Duration> {
        self.timer
    }

    /// Handles a decoded reply; wrong xids and replies the current state does
    /// not expect are ignored. Overdue timers run first, so a caller that is
    /// late to `on_timer` gets the same result (and never a timer in the past)
    /// as a punctual one; in particular the acquisition deadline wins over a
    /// late OFFER or ACK.
    pub fn on_reply(&mut self, now: Duration, reply: Reply) -> Vec<Action> {
        let mut actions = self.on_timer(now);
        if reply.xid() != self.xid {
            return actions;
        }
        actions.extend(match (self.state, reply) {
            (State::Selecting, Reply::Offer { offer, .. }) => {
                self.selected = Some(offer);
                self.state = State::Requesting;
                self.send_selecting_request(now)
            }
            (State::Requesting, Reply::Ack { offer, .. }) => {
                vec![Action::Bound(self.hold(now, offer))]
            }
            (State::Requesting, Reply::Nak { server, .. }) => {
                self.refused_by = Some(server);
                self.start_selecting(now)
            }
            (State::Renewing | State::Rebinding, Reply::Ack { offer, .. }) => {
                self.renew(now, offer)
            }
            (State::Renewing | State::Rebinding, Reply::Nak { .. }) => self.lose(),
            _ => Vec::new(),
        });
        actions
    }

    /// Call when `now >= next_timer()`; an early call does nothing.
    pub fn on_timer(&mut self, now: Duration) -> Vec<Action> {
        if self.timer.is_none_or(|due| now < due) {
            return Vec::new();
        }
        match self.state {
            State::Selecting | State::Requesting if now >= self.give_up_at => self.give_up(),
            State::Selecting => self.send_discover(now),
            State::Requesting => self.send_selecting_request(now),
            State::Bound | State::Renewing | State::Rebinding => self.follow_lease(now),
            State::Init | State::Finished => Vec::new(),
        }
    }

    /// Gives the lease back (unicast RELEASE) if there is one; always finishes.
    pub fn release(&mut self) -> Vec<Action> {
        let lease = self.lease.take();
        self.finish();
        let Some(lease) = lease else {
            return Vec::new();
        };
        let (address, server) = (lease.offer.address, lease.offer.server);
        let xid = self.new_xid();
        let release = Message::Release {
            xid,
            address,
            server,
        };
        vec![Action::Send(release, Destination::Unicast(server))]
    }

    fn new_xid(&mut self) -> u32 {
        let xid = self.xid_source;
        // xorshift32; zero is its fixed point, so step off it.
        let mut x = if xid == 0 { 0x9e37_79b9 } else { xid };
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.xid_source = x;
        xid
    }

    fn retransmit_at(&self, now: Duration) -> Duration {
        now.saturating_add(RETRANSMIT).min(self.give_up_at)
    }

    fn start_selecting(&mut self, now: Duration) -> Vec<Action> {
        self.state = State::Selecting;
        self.selected = None;
        self.xid = self.new_xid();
        self.send_discover(now)
    }

    fn send_discover(&mut self, now: Duration) -> Vec<Action> {
        self.timer = Some(self.retransmit_at(now));
        let discover = Message::Discover { xid: self.xid };
        vec![Action::Send(discover, Destination::Broadcast)]
    }

    /// Keeps the OFFER's xid, as RFC 2131 §4.4.1 requires for this REQUEST.
    fn send_selecting_request(&mut self, now: Duration) -> Vec<Action> {
        let Some(offer) = &self.selected else {
            return Vec::new();
        };
        let (requested, server) = (offer.address, offer.server);
        let kind = RequestKind::Selecting { requested, server };
        self.timer = Some(self.retransmit_at(now));
        vec![request(self.xid, kind, Destination::Broadcast)]
    }

    fn give_up(&mut self) -> Vec<Action> {
        let after = self.give_up_after.as_secs_f64();
        let reason = match (self.refused_by, self.state) {
            (Some(server), _) => format!("DHCP server {server} refused (NAK)"),
            (None, State::Requesting) => format!("no DHCP answer to the request after {after} s"),
            (None, _) => format!("no DHCP offer after {after} s"),
        };
        self.finish();
        vec![Action::Failed(reason)]
    }

    /// A different address means the old one is gone; the caller re-acquires
    /// rather than this machine silently swapping addresses under it.
    fn renew(&mut self, now: Duration, offer: Offer) -> Vec<Action> {
        match &self.lease {
            Some(old) if old.offer.address == offer.address => {
                vec![Action::Renewed(self.hold(now, offer))]
            }
            _ => self.lose(),
        }
    }

    fn hold(&mut self, now: Duration, offer: Offer) -> Lease {
        let lease = Lease::new(offer, now);
        self.state = State::Bound;
        self.selected = None;
        self.timer = Some(lease.t1);
        self.lease = Some(lease.clone());
        lease
    }

    /// Moves to whatever state the lease calls for at `now`; re-entering the
    /// current state is a retransmit (same xid), a new state a new transaction.
    fn follow_lease(&mut self, now: Duration) -> Vec<Action> {
        let Some(lease) = &self.lease else {
            return self.lose();
        };
        let phase = lease.phase(now);
        let (ciaddr, server, t1) = (lease.offer.address, lease.offer.server, lease.t1);
        let (kind, destination, until) = match phase {
            State::Bound => {
                self.state = State::Bound;
                self.timer = Some(t1);
                return Vec::new();
            }
            State::Renewing => (
                RequestKind::Renewing { ciaddr },
                Destination::Unicast(server),
                lease.t2,
            ),
            State::Rebinding => (
                RequestKind::Rebinding { ciaddr },
                Destination::Broadcast,
                lease.expiry,
            ),
            _ => return self.lose(),
        };
        if self.state != phase {
            self.state = phase;
            self.xid = self.new_xid();
        }
        self.timer = Some(now.saturating_add(renewal_wait(until.saturating_sub(now))));
        vec![request(self.xid, kind, destination)]
    }

    fn lose(&mut self) -> Vec<Action> {
        let lease = self.lease.take();
        self.finish();
        lease.map(Action::Lost).into_iter().collect()
    }

    fn finish(&mut self) {
        self.state = State::Finished;
        self.timer = None;
        self.selected = None;
        self.lease = None;
    }
}

fn request(xid: u32, kind: RequestKind, destination: Destination) -> Action {
    Action::Send(Message::Request { xid, kind }, destination)
}

/// RFC 2131 §4.4.5: half the remaining time, at least 60 s, but never past
/// the end of the phase, so a 2-minute lease still reaches REBINDING on time.
fn renewal_wait(remaining: Duration) -> Duration {
    (remaining / 2).max(MIN_RENEW_WAIT).min(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const DEADLINE: Duration = Duration::from_secs(3);
    const RENEWING: RequestKind = RequestKind::Renewing { ciaddr: ADDRESS };
    const REBINDING: RequestKind = RequestKind::Rebinding { ciaddr: ADDRESS };
    const SELECTING: RequestKind = RequestKind::Selecting {
        requested: ADDRESS,
        server: SERVER,
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn offer(lease: u64, t1: Option<u64>, t2: Option<u64>) -> Offer {
        Offer {
            address: ADDRESS,
            server: SERVER,
            prefix_len: 24,
            router: Some(Ipv4Addr::new(192, 0, 2, 254)),
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            lease_time: secs(lease),
            renewal_time: t1.map(secs),
            rebinding_time: t2.map(secs),
        }
    }

    fn offered(xid: u32) -> Reply {
        Reply::Offer {
            xid,
            offer: offer(3600, None, None),
        }
    }

    fn acked(xid: u32, offer: Offer) -> Reply {
        Reply::Ack { xid, offer }
    }

    fn failed(reason: &str) -> Vec<Action> {
        vec![Action::Failed(reason.to_string())]
    }

    /// Acquires at t=0 with xid 7 and binds at t=0.5 s with the given offer.
    fn bound(offer: Offer) -> (Client, Lease) {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        c.on_reply(ms(100), offered(7));
        match c.on_reply(ms(500), acked(7, offer)).as_slice() {
            [Action::Bound(lease)] => (c, lease.clone()),
            other => panic!("expected Bound, got {other:?}"),
        }
    }

    fn sent_xid(actions: &[Action]) -> u32 {
        match actions {
            [Action::Send(Message::Discover { xid } | Message::Request { xid, .. }, _)] => *xid,
            [Action::Send(Message::Release { xid, .. }, _)] => *xid,
            other => panic!("expected one message, got {other:?}"),
        }
    }

    #[test]
    fn happy_path_binds_with_default_times() {
        let (mut c, actions) = Client::acquire(secs(10), 7, DEADLINE);
        let discover = Action::Send(Message::Discover { xid: 7 }, Destination::Broadcast);
        assert_eq!(actions, vec![discover]);
        assert_eq!(
            (c.state(), c.next_timer()),
            (State::Selecting, Some(secs(11)))
        );
        let actions = c.on_reply(ms(10_200), offered(7));
        assert_eq!(actions, vec![request(7, SELECTING, Destination::Broadcast)]);
        assert_eq!(c.state(), State::Requesting);
        let actions = c.on_reply(ms(10_300), acked(7, offer(3600, None, None)));
        let lease = Lease {
            offer: offer(3600, None, None),
            bound_at: ms(10_300),
            t1: ms(10_300 + 1_800_000),
            t2: ms(10_300 + 3_150_000),
            expiry: ms(10_300 + 3_600_000),
        };
        assert_eq!(actions, vec![Action::Bound(lease.clone())]);
        assert_eq!((c.state(), c.lease()), (State::Bound, Some(&lease)));
        assert_eq!(c.next_timer(), Some(lease.t1));
    }

    #[test]
    fn explicit_t1_t2_options_are_used() {
        let (_, lease) = bound(offer(3600, Some(600), Some(1200)));
        let times = (lease.t1, lease.t2, lease.expiry);
        assert_eq!(times, (ms(600_500), ms(1_200_500), ms(3_600_500)));
    }

    #[test]
    fn nonsense_times_are_clamped() {
        let (_, lease) = bound(offer(100, Some(500), Some(400)));
        assert_eq!((lease.t1, lease.t2), (lease.expiry, lease.expiry));
        let (_, lease) = bound(offer(100, Some(80), Some(50)));
        assert_eq!((lease.t1, lease.t2), (ms(50_500), ms(50_500)));
    }

    #[test]
    fn discover_retransmits_each_second_then_fails_at_deadline() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        assert_eq!(sent_xid(&c.on_timer(secs(1))), 7);
        assert_eq!(sent_xid(&c.on_timer(secs(2))), 7);
        assert_eq!(c.next_timer(), Some(secs(3)));
        assert_eq!(c.on_timer(secs(3)), failed("no DHCP offer after 3 s"));
        assert_eq!((c.state(), c.next_timer()), (State::Finished, None));
    }

    #[test]
    fn request_retransmits_then_fails_at_deadline() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        c.on_reply(ms(1500), offered(7));
        let retransmit = c.on_timer(ms(2500));
        assert_eq!(
            retransmit,
            vec![request(7, SELECTING, Destination::Broadcast)]
        );
        assert_eq!(c.next_timer(), Some(secs(3)));
        let reason = "no DHCP answer to the request after 3 s";
        assert_eq!(c.on_timer(secs(3)), failed(reason));
        assert_eq!(c.state(), State::Finished);
    }

    #[test]
    fn reply_after_deadline_fails_instead_of_requesting() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, ms(2500));
        let actions = c.on_reply(secs(4), offered(7));
        assert_eq!(actions, failed("no DHCP offer after 2.5 s"));
    }

    #[test]
    fn wrong_xid_and_offer_while_requesting_are_ignored() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        assert!(c.on_reply(ms(100), offered(8)).is_empty());
        assert_eq!(c.state(), State::Selecting);
        c.on_reply(ms(200), offered(7));
        assert!(c
            .on_reply(ms(300), acked(8, offer(60, None, None)))
            .is_empty());
        assert!(c
            .on_reply(
                ms(300),
                Reply::Nak {
                    xid: 8,
                    server: SERVER
                }
            )
            .is_empty());
        assert!(c.on_reply(ms(300), offered(7)).is_empty());
        assert_eq!(c.state(), State::Requesting);
    }

    #[test]
    fn nak_while_requesting_restarts_with_new_xid() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        c.on_reply(ms(100), offered(7));
        let xid = sent_xid(&c.on_reply(
            ms(200),
            Reply::Nak {
                xid: 7,
                server: SERVER,
            },
        ));
        assert_ne!(xid, 7);
        assert_eq!(
            (c.state(), c.next_timer()),
            (State::Selecting, Some(ms(1200)))
        );
        assert_eq!(sent_xid(&c.on_timer(ms(1200))), xid);
        c.on_timer(ms(2200));
        let reason = "DHCP server 192.0.2.1 refused (NAK)";
        assert_eq!(c.on_timer(secs(3)), failed(reason));
    }

    #[test]
    fn renews_at_t1_by_unicast_then_back_to_bound() {
        let (mut c, lease) = bound(offer(3600, None, None));
        let actions = c.on_timer(lease.t1);
        let xid = sent_xid(&actions);
        assert_ne!(xid, 7);
        assert_eq!(
            actions,
            vec![request(xid, RENEWING, Destination::Unicast(SERVER))]
        );
        assert_eq!(c.state(), State::Renewing);
        // Half of the 1350 s left until T2.
        assert_eq!(c.next_timer(), Some(lease.t1 + secs(675)));
        assert_eq!(sent_xid(&c.on_timer(lease.t1 + secs(675))), xid);
        let now = lease.t1 + secs(700);
        let renewed = Lease::new(offer(3600, None, None), now);
        let actions = c.on_reply(now, acked(xid, offer(3600, None, None)));
        assert_eq!(actions, vec![Action::Renewed(renewed.clone())]);
        assert_eq!(
            (c.state(), c.next_timer()),
            (State::Bound, Some(renewed.t1))
        );
    }

    #[test]
    fn unanswered_renewal_rebinds_at_t2_then_expires() {
        let (mut c, lease) = bound(offer(3600, None, None));
        let renew_xid = sent_xid(&c.on_timer(lease.t1));
        let actions = c.on_timer(lease.t2);
        let xid = sent_xid(&actions);
        assert_ne!(xid, renew_xid);
        assert_eq!(
            actions,
            vec![request(xid, REBINDING, Destination::Broadcast)]
        );
        assert_eq!(c.next_timer(), Some(lease.t2 + secs(225)));
        assert_eq!(c.on_timer(lease.expiry), vec![Action::Lost(lease)]);
        assert_eq!(
            (c.state(), c.next_timer(), c.lease()),
            (State::Finished, None, None)
        );
    }

    #[test]
    fn short_lease_retransmit_never_overshoots_t2() {
        let (mut c, lease) = bound(offer(120, None, None));
        c.on_timer(lease.t1);
        assert_eq!(c.next_timer(), Some(lease.t2));
    }

    #[test]
    fn nak_or_new_address_while_renewing_loses_lease() {
        let (mut c, lease) = bound(offer(3600, None, None));
        let xid = sent_xid(&c.on_timer(lease.t1));
        let actions = c.on_reply(
            lease.t1,
            Reply::Nak {
                xid,
                server: SERVER,
            },
        );
        assert_eq!(actions, vec![Action::Lost(lease)]);
        assert_eq!(c.state(), State::Finished);
        let (mut c, lease) = bound(offer(3600, None, None));
        let xid = sent_xid(&c.on_timer(lease.t2));
        let moved = Offer {
            address: Ipv4Addr::new(192, 0, 2, 11),
            ..offer(3600, None, None)
        };
        assert_eq!(
            c.on_reply(lease.t2, acked(xid, moved)),
            vec![Action::Lost(lease)]
        );
        assert_eq!(c.state(), State::Finished);
    }

    #[test]
    fn restore_in_each_window() {
        let lease = Lease::new(offer(3600, None, None), secs(100));
        let (c, actions) = Client::restore(secs(200), lease.clone(), 1);
        assert!(actions.is_empty());
        assert_eq!((c.state(), c.next_timer()), (State::Bound, Some(lease.t1)));
        let (c, actions) = Client::restore(lease.t1, lease.clone(), 1);
        assert_eq!(
            actions,
            vec![request(1, RENEWING, Destination::Unicast(SERVER))]
        );
        assert_eq!(c.state(), State::Renewing);
        let (c, actions) = Client::restore(lease.t2, lease.clone(), 1);
        assert_eq!(actions, vec![request(1, REBINDING, Destination::Broadcast)]);
        assert_eq!(c.state(), State::Rebinding);
        let (c, actions) = Client::restore(lease.expiry, lease.clone(), 1);
        assert_eq!(actions, vec![Action::Lost(lease)]);
        assert_eq!((c.state(), c.next_timer()), (State::Finished, None));
    }

    #[test]
    fn release_from_bound_unicasts_and_finishes() {
        let (mut c, _) = bound(offer(3600, None, None));
        let actions = c.release();
        let xid = sent_xid(&actions);
        let release = Message::Release {
            xid,
            address: ADDRESS,
            server: SERVER,
        };
        assert_eq!(
            actions,
            vec![Action::Send(release, Destination::Unicast(SERVER))]
        );
        assert_eq!(
            (c.state(), c.next_timer(), c.lease()),
            (State::Finished, None, None)
        );
    }

    #[test]
    fn release_while_selecting_sends_nothing() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        assert!(c.release().is_empty());
        assert_eq!((c.state(), c.next_timer()), (State::Finished, None));
    }

    #[test]
    fn early_timer_does_nothing() {
        let (mut c, _) = Client::acquire(Duration::ZERO, 7, DEADLINE);
        assert!(c.on_timer(ms(999)).is_empty());
        assert_eq!(
            (c.state(), c.next_timer()),
            (State::Selecting, Some(secs(1)))
        );
        let (mut c, lease) = bound(offer(3600, None, None));
        assert!(c.on_timer(lease.t1 - ms(1)).is_empty());
        assert_eq!((c.state(), c.next_timer()), (State::Bound, Some(lease.t1)));
    }

    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
            choices[self.below(choices.len() as u64) as usize]
        }
    }

    fn random_offer(rng: &mut XorShift) -> Offer {
        let time = |rng: &mut XorShift| {
            let time = secs(rng.below(5000));
            rng.pick(&[None, Some(time)])
        };
        Offer {
            address: rng.pick(&[ADDRESS, Ipv4Addr::new(192, 0, 2, 11)]),
            lease_time: secs(rng.pick(&[0, 1, 90, 120, 3600, u64::MAX])),
            renewal_time: time(rng),
            rebinding_time: time(rng),
            ..offer(0, None, None)
        }
    }

    fn random_reply(rng: &mut XorShift, current_xid: u32) -> Reply {
        let stray = rng.below(1 << 32) as u32;
        let xid = rng.pick(&[current_xid, current_xid, stray]);
        match rng.below(3) {
            0 => Reply::Offer {
                xid,
                offer: random_offer(rng),
            },
            1 => Reply::Ack {
                xid,
                offer: random_offer(rng),
            },
            _ => Reply::Nak {
                xid,
                server: SERVER,
            },
        }
    }

    fn random_client(rng: &mut XorShift, now: Duration) -> Client {
        if rng.below(2) == 0 {
            return Client::acquire(now, rng.below(1 << 32) as u32, ms(rng.below(5000))).0;
        }
        let mut time = || secs(rng.below(3000));
        let (t1, t2, expiry) = (time(), time(), time());
        let offer = random_offer(rng);
        let lease = Lease {
            offer,
            bound_at: now,
            t1,
            t2,
            expiry,
        };
        Client::restore(now, lease, rng.below(1 << 32) as u32).0
    }

    /// The caller's loop relies on these: no panic, timers never in the past,
    /// silence once finished.
    #[test]
    fn random_event_sequences_keep_invariants() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut seen = [false; 7];
        for _ in 0..500 {
            let mut now = secs(rng.below(1000));
            let mut c = random_client(&mut rng, now);
            for _ in 0..60 {
                let was_finished = c.state() == State::Finished;
                let (short, long) = (ms(rng.below(1500)), secs(rng.below(2000)));
                now += rng.pick(&[Duration::ZERO, short, long]);
                let actions = match rng.below(10) {
                    0..=2 => c.on_timer(now),
                    3 => c.on_timer(c.next_timer().unwrap_or(now).max(now)),
                    4..=8 => c.on_reply(now, random_reply(&mut rng, c.xid)),
                    _ => c.release(),
                };
                assert!(
                    !was_finished || actions.is_empty(),
                    "finished but acted: {actions:?}"
                );
                match c.next_timer() {
                    Some(timer) => assert!(timer >= now, "{c:?} at {now:?}"),
                    None => assert_eq!((c.state(), c.lease()), (State::Finished, None)),
                }
                seen[c.state() as usize] = true;
            }
        }
        // Everything but the transient INIT was exercised.
        assert_eq!(seen, [false, true, true, true, true, true, true]);
    }
}
