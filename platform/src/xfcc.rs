//! The `x-forwarded-client-cert` header as Envoy writes it: elements separated by `,`, each a
//! `;`-separated list of `key=value` pairs, where a value may be double-quoted so that it can
//! hold `,`, `;` and `=` (a certificate Subject does), with `\"` and `\\` escaping inside the
//! quotes. Every proxy on the way appends its element, so only the last one was written by our
//! own sidecar; earlier ones came from further away and prove nothing.
//!
//! Parsing is strict: an unterminated quote, a pair without `=`, text after a closing quote
//! or an empty element makes the whole header invalid, so nothing a client smuggles into a
//! quoted Subject can be read as a key.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error("the header is empty")]
    Empty,
    #[error("an element is empty")]
    EmptyElement,
    #[error("a pair has no '='")]
    NoEquals,
    #[error("a key is empty")]
    EmptyKey,
    #[error("a quoted value is not closed")]
    UnterminatedQuote,
    #[error("text follows a closing quote")]
    TextAfterQuote,
    #[error("a backslash escapes nothing")]
    BadEscape,
}

/// One proxy's element: its pairs in order (keys as written; compare them case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub pairs: Vec<(String, String)>,
}

impl Element {
    /// Every value of `key` (case-insensitive), in order.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a whole header into its elements, first (farthest) to last (nearest).
pub fn parse(header: &str) -> Result<Vec<Element>, XfccError> {
    if header.trim().is_empty() {
        return Err(XfccError::Empty);
    }
    let mut elements = Vec::new();
    let mut pairs = Vec::new();
    let mut chars = header.chars().peekable();
    loop {
        // key
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(',' | ';') | None => {
                    return Err(if key.trim().is_empty() && pairs.is_empty() {
                        XfccError::EmptyElement
                    } else {
                        XfccError::NoEquals
                    });
                }
                Some(c) => key.push(c),
            }
        }
        let key = key.trim().to_string();
        if key.is_empty() {
            return Err(XfccError::EmptyKey);
        }
        // value
        while chars.peek().is_some_and(|c| *c == ' ') {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(XfccError::UnterminatedQuote),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => value.push(c),
                        _ => return Err(XfccError::BadEscape),
                    },
                    Some(c) => value.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ') {
                chars.next();
            }
            if !matches!(chars.peek(), None | Some(',' | ';')) {
                return Err(XfccError::TextAfterQuote);
            }
        } else {
            while let Some(c) = chars.peek() {
                if matches!(c, ',' | ';') {
                    break;
                }
                if *c == '"' {
                    return Err(XfccError::TextAfterQuote);
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        pairs.push((key, value));
        match chars.next() {
            Some(';') => continue,
            Some(',') => elements.push(Element {
                pairs: std::mem::take(&mut pairs),
            }),
            None => {
                elements.push(Element { pairs });
                return Ok(elements);
            }
            Some(_) => unreachable!("values stop only at ';', ',' or the end"),
        }
    }
}

/// The element our own sidecar appended: the last one.
pub fn nearest(header: &str) -> Result<Element, XfccError> {
    parse(header)?.pop().ok_or(XfccError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_s_documented_examples() {
        let h = r#"By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com"#;
        let e = nearest(h).unwrap();
        assert_eq!(
            e.values("uri").collect::<Vec<_>>(),
            ["http://testclient.lyft.com"]
        );
        assert_eq!(
            e.values("Subject").next(),
            Some("/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client")
        );
        let two = r#"By=http://frontend.lyft.com;Hash=abc;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=def;URI=http://frontend.lyft.com"#;
        let elements = parse(two).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(
            elements[1].values("URI").next(),
            Some("http://frontend.lyft.com")
        );
        let dns = r#"By=http://frontend.lyft.com;Hash=abc;Subject="CN=x";URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com"#;
        assert_eq!(nearest(dns).unwrap().values("dns").count(), 2);
    }

    #[test]
    fn a_quoted_subject_cannot_smuggle_keys_or_elements() {
        // The comma and the URI= are inside the quotes: part of the Subject, nothing else.
        let h = r#"Hash=ab;Subject="CN=x,URI=spiffe://cluster.local/ns/a/sa/order-service";URI=spiffe://cluster.local/ns/a/sa/evil"#;
        let elements = parse(h).unwrap();
        assert_eq!(elements.len(), 1);
        let uris: Vec<_> = elements[0].values("URI").collect();
        assert_eq!(uris, ["spiffe://cluster.local/ns/a/sa/evil"]);
        let escaped = r#"Subject="CN=\"a,b\";URI=x";URI=spiffe://td/ns/a/sa/real"#;
        let e = nearest(escaped).unwrap();
        assert_eq!(e.values("subject").next(), Some(r#"CN="a,b";URI=x"#));
        assert_eq!(
            e.values("uri").collect::<Vec<_>>(),
            ["spiffe://td/ns/a/sa/real"]
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for (h, want) in [
            ("", XfccError::Empty),
            ("URI", XfccError::NoEquals),
            ("=x", XfccError::EmptyKey),
            (r#"Subject="CN=x;URI=y"#, XfccError::UnterminatedQuote),
            (r#"Subject="a"b;URI=y"#, XfccError::TextAfterQuote),
            (r#"Subject=a"b""#, XfccError::TextAfterQuote),
            (r#"Subject="\n""#, XfccError::BadEscape),
            ("URI=a,,URI=b", XfccError::EmptyElement),
            ("URI=a;;URI=b", XfccError::NoEquals),
        ] {
            assert_eq!(parse(h), Err(want.clone()), "{h:?}");
        }
    }

    /// What the fuzz target (`fuzz/fuzz_targets/xfcc.rs`) checks, on random headers built
    /// from the characters that matter, so CI runs it too: no panic, and a parsed header
    /// printed back with every value quoted parses to the same elements.
    #[test]
    fn random_headers_parse_or_are_refused_and_round_trip() {
        use rand::Rng;
        const ALPHABET: &[char] = &['a', 'U', 'R', 'I', '=', ';', ',', '"', '\\', ' ', ':', '/'];
        let mut rng = rand::rng();
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let header: String = (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            let Ok(elements) = parse(&header) else {
                continue;
            };
            parsed += 1;
            if elements
                .iter()
                .flat_map(|e| &e.pairs)
                .any(|(k, _)| k.contains(['"', ',', ';', '=']) || k.trim() != k)
            {
                continue;
            }
            let printed = elements
                .iter()
                .map(|e| {
                    e.pairs
                        .iter()
                        .map(|(k, v)| {
                            format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                        })
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .collect::<Vec<_>>()
                .join(",");
            assert_eq!(
                parse(&printed),
                Ok(elements),
                "{header:?} printed as {printed:?}"
            );
        }
        assert!(
            parsed > 100,
            "the generator makes parseable headers too ({parsed})"
        );
    }
}
