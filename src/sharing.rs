//! The kernel's rules for links that share one parent: a parent carries either
//! macvlan or ipvlan links, all ipvlan links of a parent share one mode (a new
//! l3 slave silently switches the l2 ones), and a passthru macvlan has its
//! parent to itself. The lease store checks them inside the transaction that
//! records an attachment, so two concurrent attaches cannot both pass.

use std::fmt;

use crate::config::{Driver, Mode, Network};

/// The kind of link an attachment put on its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    pub driver: Driver,
    pub mode: Mode,
}

impl LinkSpec {
    pub fn of(net: &Network) -> LinkSpec {
        LinkSpec {
            driver: net.driver,
            mode: net.mode(),
        }
    }

    /// Every kind of link there is.
    pub fn all() -> [LinkSpec; 8] {
        use Driver::*;
        let l = |driver, mode| LinkSpec { driver, mode };
        [
            l(Macvlan, Mode::Bridge),
            l(Macvlan, Mode::Vepa),
            l(Macvlan, Mode::Private),
            l(Macvlan, Mode::Passthru),
            l(Macvlan, Mode::Source),
            l(Ipvlan, Mode::L2),
            l(Ipvlan, Mode::L3),
            l(Ipvlan, Mode::L3s),
        ]
    }

    /// The kinds of link that cannot sit on one parent beside this one.
    pub fn clashing(self) -> impl Iterator<Item = (LinkSpec, &'static str)> {
        LinkSpec::all()
            .into_iter()
            .filter_map(move |other| clash(self, other).map(|why| (other, why)))
    }
}

/// As text, `macvlan bridge`.
impl serde::Serialize for LinkSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.driver, self.mode)
    }
}

/// Why two links cannot be on one parent at once, if they cannot.
pub fn clash(a: LinkSpec, b: LinkSpec) -> Option<&'static str> {
    if a.driver != b.driver {
        return Some("a parent carries either macvlan or ipvlan links, not both");
    }
    if a.driver == Driver::Ipvlan && a.mode != b.mode {
        return Some("all ipvlan links of a parent share one ipvlan mode");
    }
    if a.mode == Mode::Passthru || b.mode == Mode::Passthru {
        return Some("passthru needs the parent to itself");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use Driver::*;

    fn l(driver: Driver, mode: Mode) -> LinkSpec {
        LinkSpec { driver, mode }
    }

    #[test]
    fn rules_follow_the_kernel() {
        assert_eq!(
            clash(l(Macvlan, Mode::Bridge), l(Macvlan, Mode::Private)),
            None
        );
        assert_eq!(clash(l(Ipvlan, Mode::L2), l(Ipvlan, Mode::L2)), None);
        assert!(clash(l(Macvlan, Mode::Bridge), l(Ipvlan, Mode::L2))
            .unwrap()
            .contains("either macvlan or ipvlan"));
        assert!(clash(l(Ipvlan, Mode::L2), l(Ipvlan, Mode::L3))
            .unwrap()
            .contains("one ipvlan mode"));
        assert!(clash(l(Macvlan, Mode::Passthru), l(Macvlan, Mode::Bridge))
            .unwrap()
            .contains("passthru"));
        assert!(clash(l(Macvlan, Mode::Passthru), l(Macvlan, Mode::Passthru)).is_some());
    }

    #[test]
    fn clashing_lists_exactly_the_kinds_that_clash() {
        let kinds = |s: LinkSpec| s.clashing().map(|(k, _)| k).collect::<Vec<_>>();
        // A bridge macvlan clashes with passthru and every ipvlan mode.
        assert_eq!(
            kinds(l(Macvlan, Mode::Bridge)),
            vec![
                l(Macvlan, Mode::Passthru),
                l(Ipvlan, Mode::L2),
                l(Ipvlan, Mode::L3),
                l(Ipvlan, Mode::L3s)
            ]
        );
        // Passthru clashes with everything, itself included.
        assert_eq!(kinds(l(Macvlan, Mode::Passthru)).len(), 8);
        // l3 with the other ipvlan modes and every macvlan.
        let k = kinds(l(Ipvlan, Mode::L3));
        assert_eq!(k.len(), 7);
        assert!(!k.contains(&l(Ipvlan, Mode::L3)));
    }
}
