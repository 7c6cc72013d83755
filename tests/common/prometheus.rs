//! A strict parser of the Prometheus text format (0.0.4), the judge of every `/metrics` test: it
//! fails the test on anything a scraper could misread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use super::http::get;

/// A parsed metrics page: every series (`name{sorted labels}`) and its value.
#[derive(Debug)]
pub struct Scrape {
    /// Every series (`name{sorted labels}`) and its value.
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of one series; fails the test if it is absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = series_key(
            name,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no series {key} on the page"))
    }

    /// The sum of every series of `name` (all label values).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

fn series_key(name: &str, mut labels: Vec<(String, String)>) -> String {
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_metric_name(name) && !name.contains(':')
}

/// Parses one sample line `name{l="v",…} value` (no timestamp: we never write one).
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(valid_metric_name(name), "bad metric name in {line:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut pos = 0;
        loop {
            let eq = after[pos..]
                .find('=')
                .map(|i| pos + i)
                .unwrap_or_else(|| panic!("label without '=' in {line:?}"));
            let label = &after[pos..eq];
            assert!(
                valid_label_name(label),
                "bad label name {label:?} in {line:?}"
            );
            assert_eq!(
                after.get(eq + 1..eq + 2),
                Some("\""),
                "unquoted label value in {line:?}"
            );
            let mut value = String::new();
            let mut i = eq + 2;
            loop {
                let c = after[i..]
                    .chars()
                    .next()
                    .unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let escaped = after[i..].chars().next();
                        value.push(match escaped {
                            Some('\\') => '\\',
                            Some('"') => '"',
                            Some('n') => '\n',
                            other => panic!("bad escape {other:?} in {line:?}"),
                        });
                        i += 1;
                    }
                    c => value.push(c),
                }
            }
            labels.push((label.to_string(), value));
            match after.get(i..i + 1) {
                Some(",") => pos = i + 1,
                Some("}") => {
                    rest = &after[i + 1..];
                    break;
                }
                other => panic!("expected ',' or '}}' after a label, got {other:?} in {line:?}"),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("expected one space before the value in {line:?}"));
    assert!(
        !value.contains(' '),
        "trailing fields (timestamp?) in {line:?}"
    );
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    };
    let mut seen = HashSet::new();
    for (l, _) in &labels {
        assert!(seen.insert(l.clone()), "label {l} repeated in {line:?}");
    }
    (name.to_string(), labels, value)
}

/// Parses a whole page strictly: HELP/TYPE well-formed and once per family, TYPE before the
/// family's samples, a family's samples contiguous, no duplicate series, counters named `_total`,
/// histogram buckets cumulative with increasing `le` ending in `+Inf`, `_count` equal to the
/// `+Inf` bucket, and `_sum` present.
pub fn parse_prometheus(page: &str) -> Scrape {
    assert!(page.ends_with('\n'), "a page ends with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = BTreeMap::new();
    // (family, labels without le) → [(le, cumulative count)]
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut hist_counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut hist_sums: HashSet<(String, String)> = HashSet::new();

    for line in page.lines() {
        assert!(!line.is_empty(), "blank line in the page");
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment
                .strip_prefix(' ')
                .expect("'# ' comment")
                .splitn(3, ' ');
            let (kw, name, text) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("comment without a name: {line:?}"));
            assert!(valid_metric_name(name), "bad name in {line:?}");
            match kw {
                Some("HELP") => {
                    assert!(text.is_some_and(|t| !t.is_empty()), "empty HELP: {line:?}");
                    assert!(helps.insert(name.to_string()), "second HELP for {name}");
                }
                Some("TYPE") => {
                    let kind = text.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad TYPE {kind:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "second TYPE for {name}"
                    );
                    assert!(
                        !closed.contains(name) && current.as_deref() != Some(name),
                        "TYPE of {name} after its samples"
                    );
                }
                other => panic!("unknown comment {other:?} (strict: only HELP and TYPE)"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        let family = if types.contains_key(&name) {
            name.clone()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram"))
                        .then(|| base.to_string())
                })
                .unwrap_or_else(|| panic!("sample {name} has no TYPE before it"))
        };
        assert!(helps.contains(&family), "no HELP for {family}");
        if current.as_deref() != Some(family.as_str()) {
            if let Some(prev) = current.take() {
                closed.insert(prev);
            }
            assert!(
                !closed.contains(&family),
                "samples of {family} are not contiguous"
            );
            current = Some(family.clone());
        }
        let kind = types[&family].as_str();
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} not named _total");
            assert!(value >= 0.0, "negative counter {line:?}");
        }
        if kind == "histogram" {
            let without_le: Vec<(String, String)> =
                labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            let group = (family.clone(), series_key("", without_le));
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("bucket without le: {line:?}"));
                let le: f64 = match le {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad le {v:?}")),
                };
                buckets.entry(group).or_default().push((le, value));
            } else if name.ends_with("_count") {
                hist_counts.insert(group, value);
            } else {
                assert!(name.ends_with("_sum"), "{name}");
                hist_sums.insert(group);
            }
        }
        assert!(
            samples.insert(series_key(&name, labels), value).is_none(),
            "duplicate series in {line:?}"
        );
    }
    for (group, series) in &buckets {
        assert!(
            series.windows(2).all(|w| w[0].0 < w[1].0),
            "le not increasing in {group:?}"
        );
        assert!(
            series.windows(2).all(|w| w[0].1 <= w[1].1),
            "buckets not cumulative in {group:?}: {series:?}"
        );
        let last = series.last().expect("at least one bucket");
        assert_eq!(last.0, f64::INFINITY, "{group:?} does not end in +Inf");
        assert_eq!(
            hist_counts.get(group),
            Some(&last.1),
            "{group:?}: _count != +Inf bucket"
        );
        assert!(hist_sums.contains(group), "{group:?} has no _sum");
    }
    assert_eq!(
        buckets.len(),
        hist_counts.len(),
        "a histogram _count without buckets"
    );
    Scrape { samples }
}

/// Scrapes `/metrics` and parses the page strictly.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let page = get(addr, "/metrics").await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/plain; version=0.0.4"),
        "{page:?}"
    );
    parse_prometheus(&page.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser is the test's judge, so it must reject what it claims to reject.
    #[test]
    fn the_prometheus_parser_rejects_broken_pages() {
        let good = "# HELP h_seconds x\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 3.5\nh_seconds_count 2\n# HELP c_total y\n# TYPE c_total counter\nc_total{a=\"q\\\"\"} 4\n";
        let s = parse_prometheus(good);
        assert_eq!(s.value("c_total", &[("a", "q\"")]), 4.0);
        assert_eq!(s.value("h_seconds_count", &[]), 2.0);
        for bad in [
            good.replace("le=\"1\"} 1", "le=\"1\"} 3"), // not cumulative
            good.replace("le=\"+Inf\"", "le=\"2\""),    // no +Inf
            good.replace("h_seconds_count 2", "h_seconds_count 1"),
            good.replace("# TYPE c_total counter\n", ""), // sample without TYPE
            good.replace("c_total{a", "c_total {a"),      // stray space
            good.replace("} 4", "} 4 123"),               // timestamp
            good.replace("counter", "countr"),
            format!("{good}h_seconds_sum 1\n"), // not contiguous, duplicate
            good.replace("\n# HELP c_total y", "\n\n# HELP c_total y"),
        ] {
            let result = std::panic::catch_unwind(|| parse_prometheus(&bad));
            assert!(result.is_err(), "accepted a broken page:\n{bad}");
        }
    }
}
