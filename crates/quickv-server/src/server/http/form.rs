//! `application/x-www-form-urlencoded` decoding, for form bodies and query strings. Sans-IO.
//!
//! Names and values decode to bytes (`%XX` is any byte, `+` is a space), so keys need not be
//! UTF-8, as on the QUIC side. A malformed escape is an error rather than passed through: a key
//! that silently changed on its way in would be a different key. The decoded length never exceeds
//! the encoded one, so the caller's cap on the input bounds every allocation here.

use bytes::Bytes;

/// Why a form or query string was refused; each message names the problem for a 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// `%` not followed by two hex digits.
    #[error("malformed percent escape at byte {at}")]
    BadEscape {
        /// Offset of the `%` in the field it occurs in.
        at: usize,
    },
    /// A field we read appears more than once; taking either would be a guess.
    #[error("field `{0}` given more than once")]
    Duplicate(&'static str),
    /// A field the operation needs is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
}

/// The decoded `name=value` pairs of a form, in order. Fields without `=` have an empty value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form {
    /// Decoded pairs.
    pairs: Vec<(Vec<u8>, Bytes)>,
}

impl Form {
    /// Decodes `input` (a body or a query string without its `?`).
    pub fn parse(input: &[u8]) -> Result<Form, FormError> {
        let mut pairs = Vec::new();
        for field in input.split(|&b| b == b'&').filter(|f| !f.is_empty()) {
            let (name, value) = match field.iter().position(|&b| b == b'=') {
                Some(eq) => (&field[..eq], &field[eq + 1..]),
                None => (field, &field[field.len()..]),
            };
            pairs.push((decode(name)?, Bytes::from(decode(value)?)));
        }
        Ok(Form { pairs })
    }

    /// The value of `name` if present exactly once; an error if it appears twice.
    pub fn optional(&self, name: &'static str) -> Result<Option<Bytes>, FormError> {
        let mut found = self
            .pairs
            .iter()
            .filter(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v);
        match (found.next(), found.next()) {
            (_, Some(_)) => Err(FormError::Duplicate(name)),
            (value, None) => Ok(value.cloned()),
        }
    }

    /// The value of `name`, which must be present exactly once.
    pub fn required(&self, name: &'static str) -> Result<Bytes, FormError> {
        self.optional(name)?.ok_or(FormError::Missing(name))
    }
}

/// Percent-decodes one name or value.
fn decode(input: &[u8]) -> Result<Vec<u8>, FormError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).and_then(|&h| hex(h));
                let lo = input.get(i + 2).and_then(|&l| hex(l));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(FormError::BadEscape { at: i }),
                }
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    Ok(out)
}

/// The value of one hex digit.
fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_plus_and_bare_names() {
        let form = Form::parse(b"key=a%20b%2Bc+d&value=%E2%9C%93&flag&&empty=").expect("valid");
        assert_eq!(form.required("key"), Ok(Bytes::from_static(b"a b+c d")));
        assert_eq!(form.required("value"), Ok(Bytes::from("\u{2713}")));
        assert_eq!(form.required("flag"), Ok(Bytes::new()));
        assert_eq!(form.required("empty"), Ok(Bytes::new()));
        assert_eq!(form.optional("absent"), Ok(None));
        assert_eq!(form.required("absent"), Err(FormError::Missing("absent")));
    }

    #[test]
    fn binary_bytes_survive() {
        let form = Form::parse(b"key=%00%FF%fe").expect("valid");
        assert_eq!(
            form.required("key"),
            Ok(Bytes::from_static(&[0, 0xff, 0xfe]))
        );
    }

    #[test]
    fn malformed_escapes_and_duplicates_are_errors() {
        assert_eq!(
            Form::parse(b"key=abc%2"),
            Err(FormError::BadEscape { at: 3 })
        );
        assert_eq!(Form::parse(b"key=%zz"), Err(FormError::BadEscape { at: 0 }));
        assert_eq!(Form::parse(b"k%=1"), Err(FormError::BadEscape { at: 1 }));
        let form = Form::parse(b"key=1&key=2").expect("parses");
        assert_eq!(form.required("key"), Err(FormError::Duplicate("key")));
    }

    #[test]
    fn the_first_equals_sign_splits() {
        let form = Form::parse(b"value=a=b").expect("valid");
        assert_eq!(form.required("value"), Ok(Bytes::from_static(b"a=b")));
    }

    #[test]
    fn no_input_is_no_fields() {
        assert_eq!(Form::parse(b""), Ok(Form::default()));
    }
}
