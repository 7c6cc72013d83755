//! The tester's picture of the world: which servers it believes are up ([`Up`]) and what the
//! table should hold ([`Model`]).
//!
//! The model is not a plain map because answers can be honest about not knowing: a write answered
//! `indeterminate` may or may not have happened. Rather than guessing (and then either crying wolf
//! or missing a lost write), the model keeps, per key, the set of values the key may hold
//! ([`Possible`]). A later read or dump must show one of them, and what it shows settles the key.
//! Settling on observation relies on the pair's design (DESIGN §3, invariant 2: the primary shows
//! only what the backup acknowledged, and a restarted server takes the survivor's data), which
//! fixes an indeterminate write's fate before anyone can read it; a general linearizability
//! checker would let such a write take effect arbitrarily late.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::tester::script::{Action, KvOp, PairMember};

/// Which servers the runner believes are up. Judging depends on it: with both up every answer is
/// exact, with the backup down writes must be refused, with the primary down everything must fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Up {
    /// Both down: the pair has lost its memory, so the model is empty.
    #[default]
    Neither,
    /// Only the primary: it must refuse writes; successful reads must match the model.
    PrimaryOnly,
    /// Only the backup: requests to the primary must fail.
    BackupOnly,
    /// The pair: every answer must match the model exactly.
    Both,
}

impl Up {
    /// Whether `server` is believed up.
    pub fn contains(self, server: PairMember) -> bool {
        matches!(
            (self, server),
            (Up::Both, _)
                | (Up::PrimaryOnly, PairMember::Primary)
                | (Up::BackupOnly, PairMember::Backup)
        )
    }

    /// The same beliefs with `server` up or down.
    pub fn with(self, server: PairMember, up: bool) -> Up {
        let is = |s: PairMember| if s == server { up } else { self.contains(s) };
        match (is(PairMember::Primary), is(PairMember::Backup)) {
            (true, true) => Up::Both,
            (true, false) => Up::PrimaryOnly,
            (false, true) => Up::BackupOnly,
            (false, false) => Up::Neither,
        }
    }

    /// The beliefs after `action`. A script that uses `Switch` changes them only through `Switch`
    /// (its servers may be started by commands the runner cannot interpret); any other script
    /// changes them through `Start`, `Stop` and `Kill`.
    pub fn after(self, action: &Action, uses_switch: bool) -> Up {
        match (action, uses_switch) {
            (Action::Switch(s), true) => self.with(*s, !self.contains(*s)),
            (Action::Start(s), false) => self.with(*s, true),
            (Action::Stop(s) | Action::Kill(s), false) => self.with(*s, false),
            _ => self,
        }
    }
}

impl fmt::Display for Up {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Up::Neither => "both servers down",
            Up::PrimaryOnly => "the backup down",
            Up::BackupOnly => "the primary down",
            Up::Both => "both servers up",
        })
    }
}

/// The values one key may hold; `None` stands for "absent". Never empty: a key the model knows
/// nothing special about is certainly absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Possible(BTreeSet<Option<String>>);

impl Possible {
    /// The key is certainly absent.
    pub fn absent() -> Possible {
        Possible(BTreeSet::from([None]))
    }

    /// The key certainly holds `value`.
    pub fn value(value: impl Into<String>) -> Possible {
        Possible(BTreeSet::from([Some(value.into())]))
    }

    /// Whether the key may be absent.
    pub fn may_be_absent(&self) -> bool {
        self.0.contains(&None)
    }

    /// Whether the key may be present (with any value).
    pub fn may_be_present(&self) -> bool {
        self.0.iter().any(Option::is_some)
    }

    /// Whether the key may hold exactly these bytes.
    pub fn may_hold(&self, value: &[u8]) -> bool {
        self.0.iter().flatten().any(|v| v.as_bytes() == value)
    }

    /// The possibilities in order: absent first, then values sorted.
    pub fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        self.0.iter().map(Option::as_deref)
    }

    /// The same possibilities without "absent" (the key was seen to exist). Absent stays if it
    /// was the only possibility, so the result is never empty.
    pub fn present(&self) -> Possible {
        let present: BTreeSet<_> = self.0.iter().filter(|v| v.is_some()).cloned().collect();
        if present.is_empty() {
            self.clone()
        } else {
            Possible(present)
        }
    }

    /// What the key may hold after `op` took effect, from each possibility.
    pub fn after(&self, op: &KvOp) -> Possible {
        Possible(
            self.0
                .iter()
                .map(|v| match (op, v) {
                    (KvOp::Insert { value, .. }, None) => Some(value.clone()),
                    (KvOp::Update { value, .. }, Some(_)) => Some(value.clone()),
                    (KvOp::Remove { .. }, _) => None,
                    (_, v) => v.clone(),
                })
                .collect(),
        )
    }

    /// What the key may hold when `op` may or may not have taken effect.
    pub fn maybe_after(&self, op: &KvOp) -> Possible {
        let mut all = self.0.clone();
        all.extend(self.after(op).0);
        Possible(all)
    }
}

impl fmt::Display for Possible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            match v {
                Some(v) => write!(f, "{v:?}")?,
                None => f.write_str("absent")?,
            }
        }
        Ok(())
    }
}

/// The table as the tester expects it: every key that may be present, with its possibilities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Keys that may be present; a key not listed is certainly absent.
    keys: BTreeMap<String, Possible>,
}

impl Model {
    /// What `key` may hold.
    pub fn possible(&self, key: &str) -> Possible {
        self.keys.get(key).cloned().unwrap_or_else(Possible::absent)
    }

    /// Records what `key` may hold from now on.
    pub fn set(&mut self, key: &str, possible: Possible) {
        if possible == Possible::absent() {
            self.keys.remove(key);
        } else {
            self.keys.insert(key.to_string(), possible);
        }
    }

    /// Forgets everything: both servers are down and the pair restarts empty.
    pub fn clear(&mut self) {
        self.keys.clear();
    }

    /// Every key that may be present, with its possibilities, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Possible)> {
        self.keys.iter().map(|(k, p)| (k.as_str(), p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(v: &str) -> KvOp {
        KvOp::Insert {
            key: "k".into(),
            value: v.into(),
        }
    }

    #[test]
    fn beliefs_follow_start_stop_kill_or_only_switch() {
        let up = Up::Neither.after(&Action::Start(PairMember::Primary), false);
        assert_eq!(up, Up::PrimaryOnly);
        let up = up.after(&Action::Start(PairMember::Backup), false);
        assert_eq!(up, Up::Both);
        assert_eq!(
            up.after(&Action::Kill(PairMember::Primary), false),
            Up::BackupOnly
        );
        assert_eq!(
            up.after(&Action::Stop(PairMember::Backup), false),
            Up::PrimaryOnly
        );
        assert_eq!(
            up.after(&Action::Sleep(Default::default()), false),
            Up::Both
        );

        // In a Switch script only Switch counts, and it flips.
        assert_eq!(
            Up::Neither.after(&Action::Start(PairMember::Primary), true),
            Up::Neither
        );
        let up = Up::Neither.after(&Action::Switch(PairMember::Backup), true);
        assert_eq!(up, Up::BackupOnly);
        assert_eq!(
            up.after(&Action::Switch(PairMember::Backup), true),
            Up::Neither
        );
        assert!(Up::Both.contains(PairMember::Backup));
        assert!(!Up::BackupOnly.contains(PairMember::Primary));
    }

    #[test]
    fn possibilities_grow_with_uncertain_writes_and_shrink_when_seen() {
        let p = Possible::absent().maybe_after(&insert("1"));
        assert!(p.may_be_absent() && p.may_hold(b"1"));
        assert_eq!(p.to_string(), "absent or \"1\"");
        assert_eq!(p.present(), Possible::value("1"));
        assert_eq!(Possible::absent().present(), Possible::absent());
        let removed = Possible::value("x").after(&KvOp::Remove { key: "k".into() });
        assert_eq!(removed, Possible::absent());
        let updated = p.after(&KvOp::Update {
            key: "k".into(),
            value: "2".into(),
        });
        assert_eq!(updated.to_string(), "absent or \"2\"");
    }

    #[test]
    fn model_forgets_absent_keys() {
        let mut model = Model::default();
        model.set("a", Possible::value("1"));
        model.set("b", Possible::absent());
        assert_eq!(model.entries().count(), 1);
        assert_eq!(model.possible("b"), Possible::absent());
        model.clear();
        assert_eq!(model.possible("a"), Possible::absent());
    }
}
