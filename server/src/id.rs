//! Client IDs and tokens: random IDs, the upgrade's query string.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p2p_proto::signal::{valid_id, valid_token};

/// A random URL-safe ID: 12 characters, 72 bits of entropy.
pub fn random_id() -> String {
    let mut bytes = [0u8; 9];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares in time independent of where the bytes differ.
pub fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the upgrade request asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub id: Option<String>,
    pub token: Option<String>,
}

/// Parses `id` and `token` from a query string. Values are percent-decoded
/// (RFC 3986; `+` stays `+`, since neither an ID nor a token may hold a
/// space). Unknown parameters are ignored. Errors (the `bad_id` case): a
/// malformed ID or token, an empty `id=`, a parameter given twice, bad
/// percent-encoding.
pub fn parse_query(query: Option<&str>) -> Result<Ask, &'static str> {
    let mut ask = Ask::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "id" => &mut ask.id,
            "token" => &mut ask.token,
            _ => continue,
        };
        if slot.is_some() {
            return Err("id and token may each be given once");
        }
        *slot = Some(percent_decode(value).ok_or("bad percent-encoding in the query")?);
    }
    if let Some(id) = &ask.id
        && !valid_id(id)
    {
        return Err("id must match ^[A-Za-z0-9_-]{1,64}$");
    }
    if let Some(t) = &ask.token
        && !valid_token(t)
    {
        return Err("token must be 16 to 128 printable ASCII characters without space");
    }
    Ok(ask)
}

/// What the upgrade asks for: the query's `id` and `token`, and the token
/// of an `Authorization: Bearer` header (`bearer`, as `http` read it). A
/// token may come one way or the other, not both.
pub fn parse_ask(
    query: Option<&str>,
    bearer: Result<Option<String>, &'static str>,
) -> Result<Ask, &'static str> {
    let mut ask = parse_query(query)?;
    if let Some(token) = bearer? {
        if ask.token.is_some() {
            return Err("the token is given twice (query and Authorization header)");
        }
        if !valid_token(&token) {
            return Err("token must be 16 to 128 printable ASCII characters without space");
        }
        ask.token = Some(token);
    }
    Ok(ask)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(parse_query(None), Ok(Ask::default()));
        let a = parse_query(Some("id=alice&token=abc%2Bdef%26ghi%3D1234&x=1")).unwrap();
        assert_eq!(a.id.as_deref(), Some("alice"));
        assert_eq!(a.token.as_deref(), Some("abc+def&ghi=1234"));
        assert!(parse_query(Some("id=")).is_err());
        assert!(parse_query(Some("id")).is_err());
        assert!(parse_query(Some("id=a&id=b")).is_err());
        assert!(parse_query(Some("id=a%2")).is_err());
        assert!(parse_query(Some("id=a%20b")).is_err());
        assert!(parse_query(Some("token=short")).is_err());
    }

    #[test]
    fn a_bearer_token_is_the_token_and_comes_one_way_only() {
        let t = "0123456789abcdef";
        let a = parse_ask(Some("id=alice"), Ok(Some(t.into()))).unwrap();
        assert_eq!(
            (a.id.as_deref(), a.token.as_deref()),
            (Some("alice"), Some(t))
        );
        assert!(parse_ask(Some("id=a&token=0123456789abcdef"), Ok(Some(t.into()))).is_err());
        assert!(parse_ask(Some("id=a"), Ok(Some("short".into()))).is_err());
        assert!(parse_ask(Some("id=a"), Err("two")).is_err());
        assert_eq!(parse_ask(Some("id=a"), Ok(None)).unwrap().token, None);
    }

    #[test]
    fn random_ids_are_valid_and_differ() {
        let a = random_id();
        assert!(valid_id(&a) && a.len() == 12);
        assert_ne!(a, random_id());
    }

    #[test]
    fn constant_time_compare() {
        assert!(bytes_equal(b"abc", b"abc"));
        assert!(!bytes_equal(b"abc", b"abd"));
        assert!(!bytes_equal(b"abc", b"abcd"));
    }
}
